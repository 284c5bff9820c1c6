//! The REMI grammar of the piano part of one window, as a state machine over token ids, so that
//! even a small or badly trained model writes tokens that decode to valid MIDI with exactly the
//! window's bars.
//!
//! Per bar: `s-<the lead sheet's signature of that bar>` `t-<its tempo bin>` (both forced: the
//! lead-sheet tokens carry no tempo, so the model cannot know it), then either `b-1` (an empty
//! bar) or notes in the order of the training targets ([`crate::data::pairing::segment_pairs`]:
//! BOSSA's `pitch_order='high_to_low'`), sorted by (onset, program, pitch high to low):
//! `o-<onset>` inside the bar and after the bar's previous onset, `i-<program>` (0..=127, no
//! drums; above the onset's previous program), `p-<pitch>` (0..=127; not above the previous pitch
//! of the same onset and program; a pitch repeats only with a longer duration, as an arpeggio's
//! first note doubles its held bass, so no note is written twice and a model cannot loop on one),
//! `d-<bucket>` and `v-<bin>`, and after a whole note another pitch, program, onset or `b-1`.
//! Duration bucket 0 is never allowed: it decodes to a zero-length note, which is silent. `</s>`
//! is allowed at a bar boundary only and ends the window early (BOSSA stops sampling on `</s>`),
//! unless turned off ([`Grammar::without_end_token`]); after the window's last `b-1` nothing is
//! allowed.
//!
//! The budget: a window may take at most `budget` new tokens. A token is allowed only if, after
//! it, the tokens left still suffice to finish the current note and bar and write every remaining
//! bar empty (`s t b-1`); so when they only just suffice, only those closing tokens remain and
//! the window always completes within its budget.
use anyhow::{bail, ensure, Result};
use std::ops::Range;

use crate::data::encodings::{measure_length, remi, DURATION_BUCKETS, TEMPO_BINS, TIME_SIGNATURES};

/// Highest non-drum program and pitch.
const MAX_MIDI: u32 = 127;
/// Velocity bins (`v-0` .. `v-31`).
const VELOCITY_BINS: u32 = 32;
/// Tokens of an empty bar: `s t b-1`.
const EMPTY_BAR_TOKENS: usize = 3;

/// One bar as the lead sheet fixes it: its time signature (an id of
/// [`TIME_SIGNATURES`](crate::data::encodings::TIME_SIGNATURES)), its length in 1/12-beat
/// positions and its tempo bin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarSpec {
    time_signature: u32,
    length: u32,
    tempo: u32,
}

impl BarSpec {
    /// A bar of signature id `time_signature` (its length from [`measure_length`]) at tempo bin
    /// `tempo`.
    pub fn new(time_signature: u32, tempo: u32) -> Result<Self> {
        ensure!((time_signature as usize) < TIME_SIGNATURES.len(), "time signature id {time_signature} is not one of the {} REMI signatures", TIME_SIGNATURES.len());
        ensure!(tempo < TEMPO_BINS, "tempo bin {tempo} is not below {TEMPO_BINS}");
        let length = measure_length(time_signature);
        let (n, d) = TIME_SIGNATURES[time_signature as usize];
        ensure!((1..=128).contains(&length), "a {n}/{d} bar is {length} positions long; REMI onsets o-0..o-127 need 1..=128");
        Ok(Self { time_signature, length, tempo })
    }

    pub fn time_signature(&self) -> u32 {
        self.time_signature
    }

    /// Bar length in 1/12-beat positions.
    pub fn length(&self) -> u32 {
        self.length
    }

    pub fn tempo(&self) -> u32 {
        self.tempo
    }

    /// The tokens of this bar without notes: `s-<ts> t-<tempo> b-1`.
    pub fn empty_bar(&self) -> Vec<u32> {
        vec![remi::TIME_SIGNATURE + self.time_signature, remi::TEMPO + self.tempo, remi::BAR_END]
    }
}

/// A set of token ids as a few ranges (the grammar never allows more than four families at once).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenSet(Vec<Range<u32>>);

impl TokenSet {
    /// The ids of `ranges` (empty ones dropped).
    pub fn from_ranges(ranges: impl IntoIterator<Item = Range<u32>>) -> Self {
        Self(ranges.into_iter().filter(|r| !r.is_empty()).collect())
    }

    pub fn contains(&self, id: u32) -> bool {
        self.0.iter().any(|r| r.contains(&id))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of ids in the set.
    pub fn len(&self) -> usize {
        self.0.iter().map(|r| r.len()).sum()
    }

    /// The ids, ascending within each range.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().flat_map(|r| r.clone())
    }

    /// One flag per vocabulary id.
    #[cfg(test)]
    pub fn mask(&self) -> Vec<bool> {
        let mut mask = vec![false; remi::VOCAB_SIZE];
        self.iter().for_each(|id| mask[id as usize] = true);
        mask
    }

    fn describe(&self) -> String {
        let names: Vec<String> = self
            .0
            .iter()
            .map(|r| match r.len() {
                1 => remi::token_name(r.start),
                _ => format!("{}..{}", remi::token_name(r.start), remi::token_name(r.end - 1)),
            })
            .collect();
        if names.is_empty() { "nothing".into() } else { names.join(", ") }
    }
}

/// Why a window's sampling stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// The model closed every bar of the window.
    Bars,
    /// The model wrote `</s>` at a bar boundary; the remaining bars stay empty.
    EndToken,
    /// Every bar is closed, but the budget had to rule out tokens the grammar allowed on the way.
    Budget,
}

/// Where in a bar the grammar stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expects `s-*` (or `</s>`).
    BarStart,
    /// Expects `t-*`.
    Tempo,
    /// After the bar header: `o-*` or `b-1`.
    Header,
    /// After `o-*`: `i-*`.
    Onset { onset: u32 },
    /// After `i-*`: `p-*`.
    Program { onset: u32, program: u32 },
    /// After `p-*`: `d-*` from bucket `min_duration` on.
    Pitch { onset: u32, program: u32, pitch: u32, min_duration: u32 },
    /// After `d-*`: `v-*`.
    Duration { onset: u32, program: u32, pitch: u32, duration: u32 },
    /// After a whole note: `p-*`, `i-*`, `o-*` or `b-1`.
    Note { onset: u32, program: u32, pitch: u32, duration: u32 },
    Done(End),
}

impl State {
    /// Fewest tokens that finish the current bar from here.
    fn to_close_bar(self) -> usize {
        match self {
            State::BarStart => EMPTY_BAR_TOKENS,
            State::Tempo => 2,
            State::Header | State::Note { .. } => 1,
            State::Onset { .. } => 5, // i p d v b-1
            State::Program { .. } => 4,
            State::Pitch { .. } => 3,
            State::Duration { .. } => 2,
            State::Done(_) => 0,
        }
    }
}

/// The grammar of one sample's piano part in one window.
#[derive(Debug, Clone)]
pub struct Grammar {
    bars: Vec<BarSpec>,
    /// Index of the bar being written.
    bar: usize,
    state: State,
    /// New tokens the window may still take.
    left: usize,
    budget_cut: bool,
    end_token: bool,
}

impl Grammar {
    /// The grammar for writing `bars` in at most `budget` new tokens.
    pub fn new(bars: Vec<BarSpec>, budget: usize) -> Result<Self> {
        ensure!(!bars.is_empty(), "a window needs at least one bar to generate");
        let least = EMPTY_BAR_TOKENS * bars.len();
        ensure!(budget >= least, "a budget of {budget} tokens cannot hold {} bars (at least {least}: s t b-1 per bar)", bars.len());
        Ok(Self { bars, bar: 0, state: State::BarStart, left: budget, budget_cut: false, end_token: true })
    }

    /// The same grammar with `</s>` never allowed: every bar must be written.
    pub fn without_end_token(self) -> Self {
        Self { end_token: false, ..self }
    }

    /// Whether the window is finished (every bar closed, or `</s>`).
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done(_))
    }

    /// Why the window finished, once it has.
    pub fn end(&self) -> Option<End> {
        match self.state {
            State::Done(end) => Some(end),
            _ => None,
        }
    }

    /// Bars closed so far.
    #[cfg(test)]
    pub fn bars_closed(&self) -> usize {
        self.bar
    }

    /// New tokens the window may still take.
    #[cfg(test)]
    pub fn tokens_left(&self) -> usize {
        self.left
    }

    /// The ids that may come next.
    pub fn allowed(&self) -> TokenSet {
        self.split_allowed().0
    }

    /// Take token `id`; an id the grammar does not allow here is an error (and changes nothing).
    pub fn advance(&mut self, id: u32) -> Result<()> {
        let (allowed, cut) = self.split_allowed();
        if !allowed.contains(id) {
            if self.is_done() {
                bail!("the window is complete; {} may not follow", remi::token_name(id));
            }
            bail!("{} is not allowed in bar {} here (allowed: {})", remi::token_name(id), self.bar, allowed.describe());
        }
        self.budget_cut |= cut;
        self.left -= 1;
        let value = |base: u32| id - base;
        self.state = match self.state {
            State::BarStart if id == remi::EOS => State::Done(End::EndToken),
            State::BarStart => State::Tempo,
            State::Tempo => State::Header,
            State::Header | State::Note { .. } if id == remi::BAR_END => self.close_bar(),
            State::Header => State::Onset { onset: value(remi::POSITION) },
            State::Onset { onset } => State::Program { onset, program: value(remi::PROGRAM) },
            State::Program { onset, program } => State::Pitch { onset, program, pitch: value(remi::PITCH), min_duration: 1 },
            State::Pitch { onset, program, pitch, .. } => State::Duration { onset, program, pitch, duration: value(remi::DURATION) },
            State::Duration { onset, program, pitch, duration } => State::Note { onset, program, pitch, duration },
            State::Note { onset, program, pitch: last, duration } => match id {
                _ if id >= remi::PITCH => {
                    let pitch = value(remi::PITCH);
                    // A repeated pitch is another note only with a longer duration (rows sort by duration next).
                    State::Pitch { onset, program, pitch, min_duration: if pitch == last { duration + 1 } else { 1 } }
                }
                _ if id >= remi::PROGRAM => State::Program { onset, program: value(remi::PROGRAM) },
                _ => State::Onset { onset: value(remi::POSITION) },
            },
            State::Done(_) => unreachable!("nothing is allowed once done"),
        };
        Ok(())
    }

    fn close_bar(&mut self) -> State {
        self.bar += 1;
        if self.bar < self.bars.len() {
            State::BarStart
        } else {
            State::Done(if self.budget_cut { End::Budget } else { End::Bars })
        }
    }

    /// What the grammar allows within the budget, and whether the budget ruled anything out.
    fn split_allowed(&self) -> (TokenSet, bool) {
        let mut allowed = Vec::with_capacity(4);
        let mut cut = false;
        let bars_after = self.bars.len().saturating_sub(self.bar + 1);
        for (range, next) in self.continuations() {
            if range.is_empty() {
                continue;
            }
            // A bar closed moves the remaining-bars count down by one.
            let needed = match next {
                State::Done(_) => 0,
                State::BarStart => EMPTY_BAR_TOKENS * bars_after,
                _ => next.to_close_bar() + EMPTY_BAR_TOKENS * bars_after,
            };
            if needed < self.left {
                allowed.push(range);
            } else {
                cut = true;
            }
        }
        (TokenSet(allowed), cut)
    }

    /// Every family the grammar allows here, with the kind of state it leads to (for its cost).
    fn continuations(&self) -> Vec<(Range<u32>, State)> {
        let Some(bar) = self.bars.get(self.bar) else { return Vec::new() };
        let family = |base: u32, from: u32, to: u32| base + from..base + to;
        let bar_end = remi::BAR_END..remi::BAR_END + 1;
        let closing = if self.bar + 1 < self.bars.len() { State::BarStart } else { State::Done(End::Bars) };
        let (o, p) = (State::Onset { onset: 0 }, State::Program { onset: 0, program: 0 });
        let pitch = State::Pitch { onset: 0, program: 0, pitch: 0, min_duration: 1 };
        let all = |base: u32| family(base, 0, MAX_MIDI + 1);
        match self.state {
            State::BarStart => vec![
                (family(remi::TIME_SIGNATURE, bar.time_signature, bar.time_signature + 1), State::Tempo),
                (remi::EOS..remi::EOS + u32::from(self.end_token), State::Done(End::EndToken)),
            ],
            State::Tempo => vec![(family(remi::TEMPO, bar.tempo, bar.tempo + 1), State::Header)],
            State::Header => vec![(bar_end, closing), (family(remi::POSITION, 0, bar.length), o)],
            State::Onset { .. } => vec![(all(remi::PROGRAM), p)],
            State::Program { .. } => vec![(all(remi::PITCH), pitch)],
            State::Pitch { min_duration, .. } => {
                vec![(family(remi::DURATION, min_duration, DURATION_BUCKETS), State::Duration { onset: 0, program: 0, pitch: 0, duration: 0 })]
            }
            State::Duration { .. } => vec![(family(remi::VELOCITY, 0, VELOCITY_BINS), State::Note { onset: 0, program: 0, pitch: 0, duration: 0 })],
            State::Note { onset, program, pitch: last, duration } => vec![
                (bar_end, closing),
                (family(remi::POSITION, onset + 1, bar.length.max(onset + 1)), o),
                (family(remi::PROGRAM, program + 1, MAX_MIDI + 1), p),
                // The same pitch again only if a longer duration is left for it.
                (family(remi::PITCH, 0, if duration + 1 < DURATION_BUCKETS { last + 1 } else { last }), pitch),
            ],
            State::Done(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::encodings::time_signature_id;

    fn id(name: &str) -> u32 {
        let id = remi::token_id(name);
        assert!(id != remi::UNK || name == "<unk>", "{name} is not a token");
        id
    }

    fn bar(n: u32, d: u32, tempo: u32) -> BarSpec {
        BarSpec::new(time_signature_id(n, d).unwrap(), tempo).unwrap()
    }

    fn feed(g: &mut Grammar, names: &str) {
        for name in names.split_whitespace() {
            g.advance(id(name)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
    }

    fn refused(g: &Grammar, name: &str) -> bool {
        let mut copy = g.clone();
        let refused = copy.advance(id(name)).is_err();
        assert_eq!(refused, !g.allowed().contains(id(name)), "advance and allowed disagree on {name}");
        refused
    }

    #[test]
    fn bar_header_is_forced_to_the_lead_sheets_signature_and_tempo() {
        let three_four = bar(3, 4, 30);
        assert_eq!(three_four.length(), 36);
        let mut g = Grammar::new(vec![three_four, bar(4, 4, 31)], 100).unwrap();
        let s = format!("s-{}", three_four.time_signature());
        assert_eq!(g.allowed().iter().collect::<Vec<_>>(), [id(&s), remi::EOS]);
        assert!(refused(&g, "s-0") && refused(&g, "t-30") && refused(&g, "b-1") && refused(&g, "o-0"));
        feed(&mut g, &s);
        assert_eq!(g.allowed().iter().collect::<Vec<_>>(), [id("t-30")]);
        assert!(refused(&g, "t-31") && refused(&g, "<unk>"));
        feed(&mut g, "t-30");
        // Onsets inside the 3/4 bar only: o-0..o-35.
        assert!(!refused(&g, "o-35") && refused(&g, "o-36"));
        assert!(!refused(&g, "b-1") && refused(&g, "</s>") && refused(&g, "i-0"));
        // An empty first bar, then the second bar's own header.
        feed(&mut g, "b-1");
        let four = format!("s-{}", bar(4, 4, 0).time_signature());
        assert!(refused(&g, &s));
        feed(&mut g, &format!("{four} t-31 o-47"));
    }

    #[test]
    fn notes_follow_remi_order() {
        let mut g = Grammar::new(vec![bar(4, 4, 35)], 100).unwrap();
        feed(&mut g, "s-9 t-35 o-12");
        assert!(refused(&g, "p-60") && refused(&g, "b-1") && refused(&g, "i-128"), "a program first, never drums");
        assert!(!refused(&g, "i-0") && !refused(&g, "i-127"));
        feed(&mut g, "i-0");
        assert!(refused(&g, "i-1") && refused(&g, "p-128") && !refused(&g, "p-127") && !refused(&g, "p-0"));
        feed(&mut g, "p-64");
        assert!(refused(&g, "d-0"), "bucket 0 is a zero-length note");
        assert!(!refused(&g, "d-1") && !refused(&g, "d-95") && refused(&g, "d-96") && refused(&g, "v-3"));
        feed(&mut g, "d-12");
        assert!(!refused(&g, "v-0") && !refused(&g, "v-31") && refused(&g, "p-60"));
        feed(&mut g, "v-20");
        // After a note: the same or a lower pitch, a higher program, a later onset, or the bar end.
        assert!(refused(&g, "p-65") && !refused(&g, "p-64") && !refused(&g, "p-0"));
        // The same pitch again is another note only with a longer duration.
        let mut again = g.clone();
        feed(&mut again, "p-64");
        assert!(refused(&again, "d-12") && refused(&again, "d-5") && !refused(&again, "d-13"));
        assert!(refused(&g, "i-0") && !refused(&g, "i-1"));
        assert!(refused(&g, "o-12") && refused(&g, "o-5") && !refused(&g, "o-13") && refused(&g, "o-48"));
        assert!(refused(&g, "</s>") && refused(&g, "s-9"));
        feed(&mut g, "p-60 d-6 v-20 i-33 p-40 d-24 v-18");
        // A new program resets the pitch order; a new onset resets the program order.
        assert!(!refused(&g, "p-39") && refused(&g, "p-41") && !refused(&g, "i-34") && refused(&g, "i-33"));
        feed(&mut g, "o-47 i-0 p-72 d-1 v-1");
        assert!(refused(&g, "o-48"), "no onset after the bar's last position");
        assert_eq!(g.end(), None);
        feed(&mut g, "b-1");
        assert_eq!(g.end(), Some(End::Bars));
        assert!(g.allowed().is_empty());
        let err = g.advance(id("s-9")).unwrap_err().to_string();
        assert!(err.contains("complete"), "{err}");
    }

    /// The bars of REMI ids as the lead sheet would fix them: each bar's `s-*` and `t-*`.
    fn bar_specs(ids: &[u32]) -> Vec<BarSpec> {
        ids.split_inclusive(|&t| t == remi::BAR_END)
            .map(|bar| BarSpec::new(bar[0] - remi::TIME_SIGNATURE, bar[1] - remi::TEMPO).unwrap())
            .collect()
    }

    #[test]
    fn every_training_target_of_the_embedded_corpus_is_a_sentence_of_the_grammar() {
        // What the model is trained on must be what the sampler allows: the order of onsets,
        // programs and pitches in the training targets (the segments `prepare` stores), in every
        // style and both meters.
        use crate::data::corpus;
        for index in 0..3 {
            let sheet = corpus::lead_sheet(0, index, 8);
            for style in corpus::Style::ALL.into_iter().filter(|s| s.fits(sheet.beats)) {
                let mut score = corpus::arrangement(&sheet, style, corpus::drawn_touch(0, index, style), false, 0, index);
                // `prepare` plays every target track on piano (program 0).
                score.instruments.iter_mut().for_each(|i| i.program = 0);
                let pairs = crate::data::pairing::segment_pairs(&score, &score, Default::default(), 0).unwrap();
                let ids: Vec<u32> = pairs.iter().flat_map(|p| remi::tokens(&p.target, false)).collect();
                let mut g = Grammar::new(bar_specs(&ids), 2 * ids.len()).unwrap().without_end_token();
                for (i, &t) in ids.iter().enumerate() {
                    g.advance(t).unwrap_or_else(|e| panic!("{} {}: token {i} ({}): {e:#}", sheet.id, style.name(), remi::token_name(t)));
                }
                assert_eq!(g.end(), Some(End::Bars), "{} {}", sheet.id, style.name());
            }
        }
    }

    #[test]
    fn end_token_only_at_a_bar_boundary() {
        let mut g = Grammar::new(vec![bar(4, 4, 35); 3], 100).unwrap();
        feed(&mut g, "s-9 t-35 o-0 i-0 p-60 d-6 v-20");
        let err = g.advance(remi::EOS).unwrap_err().to_string();
        assert!(err.contains("</s> is not allowed in bar 0") && err.contains("b-1"), "{err}");
        feed(&mut g, "b-1 </s>");
        assert_eq!((g.end(), g.bars_closed()), (Some(End::EndToken), 1));
        // Turned off, `</s>` is refused even at a bar boundary.
        let mut every_bar = Grammar::new(vec![bar(4, 4, 35); 2], 100).unwrap().without_end_token();
        assert!(refused(&every_bar, "</s>"));
        feed(&mut every_bar, "s-9 t-35 b-1");
        assert!(refused(&every_bar, "</s>") && !refused(&every_bar, "s-9"));
    }

    #[test]
    fn edges_of_each_range_leave_only_what_remains() {
        let mut g = Grammar::new(vec![bar(4, 4, 35)], 100).unwrap();
        feed(&mut g, "s-9 t-35 o-47 i-127 p-0 d-1 v-0");
        // Lowest pitch, highest program, last onset: only that pitch again or the bar end.
        assert_eq!(g.allowed().iter().collect::<Vec<_>>(), [remi::BAR_END, remi::PITCH]);
    }

    #[test]
    fn the_budget_closes_the_window_in_time() {
        // 2 bars in 12 tokens. After `s t o i p` (5), closing needs d v b-1 + s t b-1 = 6 of 7 left.
        let mut g = Grammar::new(vec![bar(4, 4, 35), bar(4, 4, 35)], 12).unwrap();
        feed(&mut g, "s-9 t-35 o-0 i-0 p-60");
        assert_eq!(g.tokens_left(), 7);
        feed(&mut g, "d-6");
        // 6 left, v b-1 s t b-1 need 5: `v` is allowed.
        feed(&mut g, "v-20");
        // 5 left: another pitch would need d v b-1 + 3 = 6 after it. Only the bar end remains.
        assert_eq!(g.allowed().iter().collect::<Vec<_>>(), [remi::BAR_END]);
        feed(&mut g, "b-1");
        // 4 left: the last bar's header, then (3 -> 2 -> 1 left) only `b-1`; `</s>` stays allowed.
        assert_eq!(g.allowed().len(), 2);
        feed(&mut g, "s-9 t-35");
        assert_eq!(g.allowed().iter().collect::<Vec<_>>(), [remi::BAR_END], "no onset: a note would not fit");
        feed(&mut g, "b-1");
        assert_eq!((g.end(), g.tokens_left()), (Some(End::Budget), 1));
        // Exactly enough for empty bars: the budget allows nothing but them.
        let mut tight = Grammar::new(vec![bar(3, 4, 20); 2], 6).unwrap();
        feed(&mut tight, "s-8 t-20");
        assert_eq!(tight.allowed().iter().collect::<Vec<_>>(), [remi::BAR_END]);
        // Too small a budget is an error up front.
        let err = Grammar::new(vec![bar(4, 4, 35); 2], 5).unwrap_err().to_string();
        assert!(err.contains("cannot hold 2 bars"), "{err}");
        assert!(Grammar::new(Vec::new(), 10).is_err());
    }

    #[test]
    fn a_random_walk_within_the_grammar_always_decodes() {
        // Pick among the allowed ids with a fixed stride: every walk must finish within its budget
        // and decode to notes inside their bars.
        for (stride, budget) in [(1usize, 40), (7, 100), (13, 30), (101, 200)] {
            let bars = vec![bar(3, 4, 30), bar(4, 4, 31), bar(6, 8, 32)];
            let mut g = Grammar::new(bars.clone(), budget).unwrap();
            let mut ids = Vec::new();
            let mut k = 0;
            while !g.is_done() {
                let allowed: Vec<u32> = g.allowed().iter().filter(|&t| t != remi::EOS).collect();
                let next = allowed[k % allowed.len()];
                k += stride;
                g.advance(next).unwrap();
                ids.push(next);
            }
            assert!(ids.len() <= budget);
            assert_eq!(ids.iter().filter(|&&t| t == remi::BAR_END).count(), 3);
            for note in remi::decode(&ids).unwrap() {
                let spec = bars[note.bar as usize];
                assert!(note.position < spec.length() && note.time_signature == spec.time_signature() && note.tempo == spec.tempo());
            }
        }
    }

    #[test]
    fn bar_specs_are_checked() {
        assert!(BarSpec::new(254, 0).is_err());
        assert!(BarSpec::new(0, 49).is_err());
        let empty = bar(4, 4, 35).empty_bar();
        assert_eq!(empty.iter().map(|&t| remi::token_name(t)).collect::<Vec<_>>(), ["s-9", "t-35", "b-1"]);
        let set = TokenSet::from_ranges([5..6, 7..7, 10..12]);
        assert_eq!((set.len(), set.mask().iter().filter(|&&m| m).count()), (3, 3));
        assert!(set.mask()[11] && !set.mask()[12]);
    }
}
