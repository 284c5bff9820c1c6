//! MuseCoco REMI tokens as BOSSA feeds them to MuseCoco-1B (`utils/REMI.py::note2token`,
//! then `MuseCocoTokenizer` over `musecoco/1b/tokenizer/vocab.json`).
//!
//! From the sorted note tuples: at every change of bar `b-1 s-<ts> t-<tempo>`, at every
//! change of onset `o-<pos>`, at every change of program within an onset `i-<program>`,
//! then `p- d- v-` per note. Empty bars vanish. The list is rotated left by one, so the
//! leading `b-1` ends the last bar: each bar reads `s t [o i p d v]... b-1`. The tokenizer
//! splits on spaces and appends `</s>`, which BOSSA cuts off (`[:, :-1]`); a score without
//! notes therefore gives no tokens.

use std::collections::HashMap;
use std::sync::LazyLock;

use super::{score_to_octuples, tempo_to_bin, velocity_to_bin, DecodeError, EncodeError, Octuple};
use crate::data::midi::{Score, DEFAULT_BPM};

pub const BOS: u32 = 0;
pub const PAD: u32 = 1;
pub const EOS: u32 = 2;
pub const UNK: u32 = 3;
/// `b-1`, the end of a bar.
pub const BAR_END: u32 = 5;
pub const SEP: u32 = 984;
pub const VOCAB_SIZE: usize = 1253;

/// First id and size of each note-level token family, in vocabulary order.
const FAMILIES: [(&str, u32, u32); 10] = [
    ("b", 4, 2),
    ("o", 6, 128),
    ("i", 134, 129),
    ("p", 263, 256),
    ("d", 519, 128),
    ("v", 647, 32),
    ("s", 679, 254),
    ("t", 933, 49),
    ("e", 982, 2),
    // `<sep>` sits alone at 984; the attribute tokens follow.
    ("<sep>", SEP, 1),
];
/// First id of each value family: `o-0`, `i-0`, `p-0`, `d-0`, `v-0`, `s-0`, `t-0` (value v is
/// the first id + v).
pub const POSITION: u32 = FAMILIES[1].1;
pub const PROGRAM: u32 = FAMILIES[2].1;
pub const PITCH: u32 = FAMILIES[3].1;
pub const DURATION: u32 = FAMILIES[4].1;
pub const VELOCITY: u32 = FAMILIES[5].1;
pub const TIME_SIGNATURE: u32 = FAMILIES[6].1;
pub const TEMPO: u32 = FAMILIES[7].1;

/// MuseCoco's attribute tokens after `<sep>`: (name, number of sub-attributes (0 = none),
/// number of values).
const ATTRIBUTES: [(&str, u32, u32); 15] = [
    ("I1s2", 28, 3),
    ("I4", 0, 29),
    ("C1", 0, 5),
    ("R1", 0, 3),
    ("R3", 0, 4),
    ("S2s1", 0, 18),
    ("S4", 22, 3),
    ("B1s1", 0, 5),
    ("TS1s1", 0, 8),
    ("K1", 0, 3),
    ("T1s1", 0, 4),
    ("P4", 0, 13),
    ("ST1", 0, 15),
    ("EM1", 0, 5),
    ("TM1", 0, 6),
];

/// All 1253 token strings, indexed by id.
pub static VOCAB: LazyLock<Vec<String>> = LazyLock::new(|| {
    let mut names: Vec<String> = ["<s>", "<pad>", "</s>", "<unk>"].map(String::from).to_vec();
    for (family, _, size) in FAMILIES {
        if size == 1 {
            names.push(family.to_string());
        } else {
            names.extend((0..size).map(|v| format!("{family}-{v}")));
        }
    }
    for (name, subs, values) in ATTRIBUTES {
        if subs == 0 {
            names.extend((0..values).map(|v| format!("{name}_{v}")));
        } else {
            names.extend((0..subs).flat_map(|s| (0..values).map(move |v| format!("{name}_{s}_{v}"))));
        }
    }
    names
});

static IDS: LazyLock<HashMap<&'static str, u32>> =
    LazyLock::new(|| VOCAB.iter().enumerate().map(|(id, name)| (name.as_str(), id as u32)).collect());

/// Id of a token string, as the tokenizer maps it (unknown strings to `<unk>`).
pub fn token_id(name: &str) -> u32 {
    IDS.get(name).copied().unwrap_or(UNK)
}

/// The token string of an id.
pub fn token_name(id: u32) -> String {
    VOCAB.get(id as usize).cloned().unwrap_or_else(|| format!("<out-of-vocabulary {id}>"))
}

/// BOSSA's fixed stage-2 attribute prefix (`get_musecoco_attributes`): piano present, every
/// other attribute "unknown", then `<sep>` (61 ids).
pub fn attribute_prefix() -> Vec<u32> {
    // Scalar attributes in BOSSA's dict order with their chosen value, then the per-instrument
    // (piano = 0, others unknown = 2) and per-genre (all unknown = 2) lists.
    let scalars = [("R1", 2), ("R3", 3), ("S2s1", 17), ("B1s1", 4), ("TS1s1", 7), ("K1", 2), ("T1s1", 3), ("P4", 12), ("EM1", 4), ("TM1", 5)];
    let mut names: Vec<String> = scalars.iter().map(|(name, v)| format!("{name}_{v}")).collect();
    names.extend((0..28).map(|i| format!("I1s2_{i}_{}", if i == 0 { 0 } else { 2 })));
    names.extend((0..22).map(|i| format!("S4_{i}_2")));
    names.push("<sep>".into());
    names.iter().map(|n| token_id(n)).collect()
}

/// Index of the first stage-2 token that carries a position: `</s>` and the 60 attribute tokens
/// carry none (BOSSA `encode_input_ids(token, pos_start=61)`), so `<sep>` takes the first one.
pub const STAGE2_POS_START: i64 = 61;

/// The 62 ids every stage-2 sequence starts with, in training and in generation: `</s>`, the
/// attribute prefix ([`attribute_prefix`]) and `<sep>`. The lead sheet follows.
pub fn stage2_prefix() -> Vec<u32> {
    std::iter::once(EOS).chain(attribute_prefix()).collect()
}

/// Token ids of a score (`MIDI_to_encoding`, `note2token`, tokenizer, `[:-1]`).
pub fn encode(score: &Score) -> Result<Vec<u32>, EncodeError> {
    Ok(tokens(&score_to_octuples(score)?, false))
}

/// `note2token` on sorted notes, as ids; `redact_performance` puts `<unk>` for tempo and
/// velocity (BOSSA's `deperf` lead sheets).
pub fn tokens(notes: &[Octuple], redact_performance: bool) -> Vec<u32> {
    let field = |base: u32, value: u32, size: u32| base + value.min(size - 1);
    let mut ids = Vec::with_capacity(notes.len() * 4 + 8);
    let (mut bar, mut position, mut program) = (None, None, None);
    for n in notes {
        if bar != Some(n.bar) {
            ids.push(BAR_END);
            ids.push(field(TIME_SIGNATURE, n.time_signature, 254));
            ids.push(if redact_performance { UNK } else { field(TEMPO, n.tempo, 49) });
            (bar, position, program) = (Some(n.bar), None, None);
        }
        if position != Some(n.position) {
            ids.push(field(POSITION, n.position, 128));
            (position, program) = (Some(n.position), None);
        }
        if program != Some(n.program) {
            ids.push(field(PROGRAM, n.program, 129));
            program = Some(n.program);
        }
        ids.push(field(PITCH, n.pitch, 256));
        ids.push(field(DURATION, n.duration, 128));
        ids.push(if redact_performance { UNK } else { field(VELOCITY, n.velocity, 32) });
    }
    if !ids.is_empty() {
        ids.rotate_left(1);
    }
    ids
}

/// Token ids back to notes. Bars count the `b-1` seen so far (vanished empty bars stay
/// gone); `<s>`, `</s>` and `<pad>` are skipped; `<unk>` in a tempo or velocity slot (a
/// redacted sequence) reads as 120 bpm or velocity 96, MuseCoco's defaults; a bar with no
/// `s-`/`t-` keeps the previous ones (4/4, 120 bpm at first).
pub fn decode(ids: &[u32]) -> Result<Vec<Octuple>, DecodeError> {
    #[derive(PartialEq)]
    enum Expect {
        Any,
        Tempo,
        Duration,
        Velocity,
    }
    let default_tempo = tempo_to_bin(DEFAULT_BPM);
    let default_velocity = velocity_to_bin(96);
    let mut notes = Vec::new();
    let mut bar = 0u32;
    let mut time_signature = super::time_signature_id(4, 4).unwrap_or_default();
    let mut tempo = default_tempo;
    let (mut position, mut program) = (None, None);
    let (mut pitch, mut duration) = (0u32, 0u32);
    let mut expect = Expect::Any;
    for (index, &id) in ids.iter().enumerate() {
        if id as usize >= VOCAB_SIZE {
            return Err(DecodeError::OutOfVocabulary { id, index, vocab: VOCAB_SIZE });
        }
        if matches!(id, BOS | EOS | PAD) {
            continue;
        }
        let unexpected = |expected: &str| DecodeError::Unexpected { token: token_name(id), index, expected: expected.into() };
        let value = |base: u32| id - base;
        let in_family = |base: u32, size: u32| (base..base + size).contains(&id);
        match expect {
            Expect::Tempo => {
                tempo = if id == UNK { default_tempo } else if in_family(TEMPO, 49) { value(TEMPO) } else { return Err(unexpected("t-* or <unk> after s-*")) };
                expect = Expect::Any;
            }
            Expect::Duration => {
                duration = if in_family(DURATION, 128) { value(DURATION) } else { return Err(unexpected("d-* after p-*")) };
                expect = Expect::Velocity;
            }
            Expect::Velocity => {
                let velocity = if id == UNK { default_velocity } else if in_family(VELOCITY, 32) { value(VELOCITY) } else { return Err(unexpected("v-* or <unk> after d-*")) };
                let (Some(position), Some(program)) = (position, program) else {
                    return Err(unexpected("a note after its o-* and i-*"));
                };
                notes.push(Octuple { bar, position, program, pitch, duration, velocity, time_signature, tempo });
                expect = Expect::Any;
            }
            Expect::Any if id == BAR_END => {
                bar += 1;
                (position, program) = (None, None);
            }
            Expect::Any if in_family(TIME_SIGNATURE, 254) => {
                time_signature = value(TIME_SIGNATURE);
                expect = Expect::Tempo;
            }
            Expect::Any if in_family(POSITION, 128) => (position, program) = (Some(value(POSITION)), None),
            Expect::Any if in_family(PROGRAM, 129) => program = Some(value(PROGRAM)),
            Expect::Any if in_family(PITCH, 256) => {
                pitch = value(PITCH);
                expect = Expect::Duration;
            }
            Expect::Any => return Err(unexpected("a REMI note token (s t o i p d v b-1)")),
        }
    }
    if expect != Expect::Any {
        return Err(DecodeError::Incomplete { missing: "the rest of a bar header or note".into() });
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_layout() {
        assert_eq!(VOCAB.len(), VOCAB_SIZE);
        assert_eq!(token_id("b-1"), BAR_END);
        assert_eq!(token_id("o-0"), 6);
        assert_eq!(token_id("i-128"), 262);
        assert_eq!(token_id("t-48"), 981);
        assert_eq!(token_id("e-1"), 983);
        assert_eq!(token_id("<sep>"), SEP);
        assert_eq!(token_id("I1s2_0_0"), 985);
        assert_eq!(token_id("I4_0"), 1069);
        assert_eq!(token_id("S4_0_0"), 1128);
        assert_eq!(token_id("ST1_0"), 1227);
        assert_eq!(token_id("TM1_5"), 1252);
        assert_eq!(token_id("nonsense"), UNK);
    }

    #[test]
    fn attribute_prefix_is_sixty_tokens_and_sep() {
        let prefix = attribute_prefix();
        assert_eq!(prefix.len(), 61);
        assert!(!prefix.contains(&UNK));
        assert_eq!(prefix[..2], [token_id("R1_2"), token_id("R3_3")]);
        assert_eq!(prefix[10], token_id("I1s2_0_0"));
        assert_eq!(prefix[11], token_id("I1s2_1_2"));
        assert_eq!(*prefix.last().unwrap(), SEP);
        let stage2 = stage2_prefix();
        assert_eq!((stage2.len(), stage2[0]), (62, EOS));
        assert_eq!(stage2[1..], prefix[..]);
        // Positions start at `<sep>`, the last token of the prefix.
        assert_eq!(STAGE2_POS_START as usize, stage2.len() - 1);
    }

    fn note(bar: u32, position: u32, program: u32, pitch: u32) -> Octuple {
        Octuple { bar, position, program, pitch, duration: 11, velocity: 20, time_signature: 9, tempo: 35 }
    }

    #[test]
    fn bars_rotate_and_repeat_only_changes() {
        let notes = [note(0, 0, 0, 60), note(0, 0, 0, 64), note(0, 0, 33, 40), note(0, 12, 0, 62), note(3, 0, 0, 60)];
        let names: Vec<String> = tokens(&notes, false).into_iter().map(token_name).collect();
        let expected = "s-9 t-35 o-0 i-0 p-60 d-11 v-20 p-64 d-11 v-20 i-33 p-40 d-11 v-20 o-12 i-0 p-62 d-11 v-20 \
                        b-1 s-9 t-35 o-0 i-0 p-60 d-11 v-20 b-1";
        assert_eq!(names.join(" "), expected);
        assert!(tokens(&[], false).is_empty());
        let redacted: Vec<String> = tokens(&notes[..1], true).into_iter().map(token_name).collect();
        assert_eq!(redacted.join(" "), "s-9 <unk> o-0 i-0 p-60 d-11 <unk> b-1");
    }

    #[test]
    fn decode_inverts_tokens_with_bars_renumbered() {
        let notes = [note(0, 0, 0, 60), note(0, 0, 33, 40), note(0, 12, 0, 62), note(3, 0, 128, 170)];
        let back = decode(&tokens(&notes, false)).unwrap();
        let mut expected = notes.to_vec();
        expected[3].bar = 1; // the two empty bars vanish
        assert_eq!(back, expected);
        assert!(matches!(decode(&[token_id("p-60"), token_id("v-3")]), Err(DecodeError::Unexpected { index: 1, .. })));
        assert!(matches!(decode(&[token_id("s-9")]), Err(DecodeError::Incomplete { .. })));
        assert!(matches!(decode(&[SEP]), Err(DecodeError::Unexpected { .. })));
    }
}
