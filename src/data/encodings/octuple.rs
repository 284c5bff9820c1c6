//! OctupleMIDI tokens in the MusicBERT fairseq dictionary (BOSSA `utils/octMIDI.py`).
//!
//! A note is 8 consecutive tokens `<0-bar> <1-position> <2-program> <3-pitch> <4-duration>
//! <5-velocity> <6-time signature> <7-tempo>`; a file is `<s>` x8, its notes (bars below
//! 256 only), `</s>` x8. BOSSA appends `<DEC>` (1237) to the 1237-entry dictionary.

use super::{score_to_octuples, DecodeError, EncodeError, Octuple, BAR_MAX};
use crate::data::midi::Score;
use crate::data::warned::Warned;

pub const BOS: u32 = 0;
pub const PAD: u32 = 1;
pub const EOS: u32 = 2;
pub const UNK: u32 = 3;
pub const MASK: u32 = 1236;
/// BOSSA's extra token that replaces `<s>` for the generation objective.
pub const DEC: u32 = 1237;
/// The fairseq dictionary size (without `<DEC>`).
pub const VOCAB_SIZE: usize = 1237;
pub const TOKENS_PER_NOTE: usize = 8;
/// Number of values of each of the 8 fields: bar, position, program, pitch, duration,
/// velocity, time signature, tempo.
pub const FIELD_SIZES: [u32; 8] = [256, 128, 129, 256, 128, 32, 254, 49];
/// Id of value 0 of each field (`<k-0>`).
pub const FIELD_OFFSETS: [u32; 8] = field_offsets();

const fn field_offsets() -> [u32; 8] {
    let mut offsets = [4; 8];
    let mut k = 1;
    while k < 8 {
        offsets[k] = offsets[k - 1] + FIELD_SIZES[k - 1];
        k += 1;
    }
    offsets
}

/// Token ids of a score (`MIDI_to_encoding` then `note_encode`).
pub fn encode(score: &Score) -> Result<Vec<u32>, EncodeError> {
    Ok(tokens(&score_to_octuples(score)?))
}

/// `note_encode` with no bar offset: `<s>` x8, the notes in bars 0..256, `</s>` x8.
pub fn tokens(notes: &[Octuple]) -> Vec<u32> {
    let mut ids = Vec::with_capacity((notes.len() + 2) * TOKENS_PER_NOTE);
    ids.extend([BOS; TOKENS_PER_NOTE]);
    for note in notes.iter().filter(|n| n.bar < BAR_MAX) {
        ids.extend(note_ids(note));
    }
    ids.extend([EOS; TOKENS_PER_NOTE]);
    ids
}

/// The 8 ids of one note (fields beyond their range are clamped to the last value).
pub fn note_ids(note: &Octuple) -> [u32; 8] {
    let fields = [
        note.bar,
        note.position,
        note.program,
        note.pitch,
        note.duration,
        note.velocity,
        note.time_signature,
        note.tempo,
    ];
    std::array::from_fn(|k| FIELD_OFFSETS[k] + fields[k].min(FIELD_SIZES[k] - 1))
}

/// Token ids back to notes: `<s>`, `</s>`, `<pad>` and `<DEC>` are skipped, every other
/// token must be the next field of a note. Special tokens belong between notes; one inside a
/// note (a misaligned sequence) is skipped too, with a warning.
pub fn decode(ids: &[u32]) -> Result<Warned<Vec<Octuple>>, DecodeError> {
    let mut notes = Vec::with_capacity(ids.len() / TOKENS_PER_NOTE);
    let mut fields = [0u32; 8];
    let mut k = 0;
    let mut inside: Vec<usize> = Vec::new();
    for (index, &id) in ids.iter().enumerate() {
        if matches!(id, BOS | EOS | PAD | DEC) {
            if k != 0 {
                inside.push(index);
            }
            continue;
        }
        if id as usize > VOCAB_SIZE {
            return Err(DecodeError::OutOfVocabulary { id, index, vocab: VOCAB_SIZE + 1 });
        }
        let value = id.wrapping_sub(FIELD_OFFSETS[k]);
        if id < FIELD_OFFSETS[k] || value >= FIELD_SIZES[k] {
            return Err(DecodeError::Unexpected {
                token: token_name(id),
                index,
                expected: format!("field {k} of a note (<{k}-*>)"),
            });
        }
        fields[k] = value;
        k += 1;
        if k == TOKENS_PER_NOTE {
            let [bar, position, program, pitch, duration, velocity, time_signature, tempo] = fields;
            notes.push(Octuple { bar, position, program, pitch, duration, velocity, time_signature, tempo });
            k = 0;
        }
    }
    if k != 0 {
        return Err(DecodeError::Incomplete { missing: format!("{} of 8 fields", TOKENS_PER_NOTE - k) });
    }
    let warnings = inside
        .first()
        .map(|&first| {
            format!(
                "skipped {} special token(s) (<s>, </s>, <pad>, <DEC>) inside notes, the first at index {first} ({}): the sequence is misaligned",
                inside.len(),
                token_name(ids[first])
            )
        })
        .into_iter()
        .collect();
    Ok(Warned { value: notes, warnings })
}

/// The dictionary string of an id (`<s>`, `<3-60>`, `<DEC>`, ...).
pub fn token_name(id: u32) -> String {
    match id {
        BOS => "<s>".into(),
        PAD => "<pad>".into(),
        EOS => "</s>".into(),
        UNK => "<unk>".into(),
        MASK => "<mask>".into(),
        DEC => "<DEC>".into(),
        _ => match (0..8).rev().find(|&k| id >= FIELD_OFFSETS[k]) {
            Some(k) if id < MASK => format!("<{k}-{}>", id - FIELD_OFFSETS[k]),
            _ => format!("<out-of-vocabulary {id}>"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_layout() {
        assert_eq!(FIELD_OFFSETS, [4, 260, 388, 517, 773, 901, 933, 1187]);
        assert_eq!(FIELD_OFFSETS[7] + FIELD_SIZES[7], MASK);
        assert_eq!(token_name(4), "<0-0>");
        assert_eq!(token_name(1235), "<7-48>");
        assert_eq!(token_name(517 + 60), "<3-60>");
        assert_eq!(token_name(MASK), "<mask>");
    }

    #[test]
    fn empty_score_gives_bos_then_eos() {
        assert_eq!(tokens(&[]), [vec![BOS; 8], vec![EOS; 8]].concat());
    }

    #[test]
    fn decode_inverts_tokens_and_drops_bars_past_255() {
        let n = |bar| Octuple { bar, position: 3, program: 128, pitch: 200, duration: 95, velocity: 31, time_signature: 253, tempo: 48 };
        let ids = tokens(&[n(0), n(255), n(256)]);
        assert_eq!(ids.len(), 8 * 4);
        assert_eq!(decode(&ids).unwrap(), Warned::clean(vec![n(0), n(255)]));
    }

    #[test]
    fn special_tokens_inside_a_note_are_skipped_with_a_warning() {
        let sample = Octuple { bar: 1, position: 2, program: 3, pitch: 4, duration: 5, velocity: 6, time_signature: 7, tempo: 8 };
        let mut ids = tokens(&[sample]);
        ids.insert(10, PAD);
        ids.insert(13, BOS);
        let decoded = decode(&ids).unwrap();
        assert_eq!(decoded.value, vec![sample]);
        assert_eq!(decoded.warnings.len(), 1);
        assert!(decoded.warnings[0].starts_with("skipped 2 special token(s)") && decoded.warnings[0].contains("index 10 (<pad>)"), "{:?}", decoded.warnings);
    }

    #[test]
    fn decode_rejects_misplaced_and_partial_notes() {
        let sample = Octuple { bar: 1, position: 2, program: 3, pitch: 4, duration: 5, velocity: 6, time_signature: 7, tempo: 8 };
        let mut ids = tokens(&[sample]);
        ids.swap(8, 9);
        assert!(matches!(decode(&ids), Err(DecodeError::Unexpected { index: 8, .. })));
        assert!(matches!(decode(&[4, 260, 388]), Err(DecodeError::Incomplete { .. })));
        assert!(matches!(decode(&[5000]), Err(DecodeError::OutOfVocabulary { .. })));
    }

}
