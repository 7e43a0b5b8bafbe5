//! Reading a worker's reply message (pure, no I/O): a [`Reply::Batch`] is
//! split into its answers, and a read's rows are kept as the raw JSON the
//! slave wrote (see [`wire::RawReadResponse`]); every other answer is decoded
//! whole.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use wire::{RawReadResponse, Reply};

/// One request's answer.
#[derive(Debug)]
pub enum Answer {
    /// A read's rows, as the slave encoded them.
    Rows(RawReadResponse),
    Other(Reply),
}

impl Answer {
    /// The reply, for callers that want it decoded (writes).
    pub fn into_reply(self) -> Result<Reply, serde_json::Error> {
        match self {
            Answer::Rows(r) => {
                Ok(Reply::Rows(wire::ReadResponse { rows: serde_json::from_str(r.rows.get())?, seq: r.seq }))
            }
            Answer::Other(reply) => Ok(reply),
        }
    }
}

/// What one reply message says.
#[derive(Debug)]
pub enum Decoded {
    /// Answers to some requests of the batch, by index.
    Answers(Vec<(u32, Answer)>),
    /// One answer for every request of the batch (a worker that could not read it).
    Whole(Reply),
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    answers: Option<Vec<(u32, &'a RawValue)>>,
}

#[derive(Deserialize)]
struct RowsPeek<'a> {
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    rows: Option<&'a RawValue>,
    #[serde(default)]
    seq: Option<u64>,
}

pub fn decode(body: &[u8]) -> Result<Decoded, serde_json::Error> {
    let envelope: Envelope = serde_json::from_slice(body)?;
    let (true, Some(answers)) = (envelope.kind == "batch", envelope.answers) else {
        return Ok(Decoded::Whole(serde_json::from_slice(body)?));
    };
    let mut out = Vec::with_capacity(answers.len());
    for (i, raw) in answers {
        let peek: RowsPeek = serde_json::from_str(raw.get())?;
        let answer = match (peek.kind == "rows", peek.rows, peek.seq) {
            (true, Some(rows), Some(seq)) => Answer::Rows(RawReadResponse { rows: rows.to_owned(), seq }),
            _ => Answer::Other(serde_json::from_str(raw.get())?),
        };
        out.push((i, answer));
    }
    Ok(Decoded::Answers(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{ReadResponse, WriteOutcome};

    fn encoded(r: &Reply) -> Vec<u8> {
        serde_json::to_vec(r).unwrap()
    }

    #[test]
    fn rows_pass_through_as_written_and_other_answers_are_decoded() {
        let mut row = wire::Row::new();
        row.insert("username".into(), "ann \"quoted\" \u{e9}".into());
        let rows = Reply::Rows(ReadResponse { rows: vec![row.clone(), row], seq: 9 });
        let written =
            Reply::Written { outcome: WriteOutcome { rows_affected: 1, last_insert_id: Some(3), seq: 10 }, epoch: 2 };
        let (a, b) = (encoded(&rows), encoded(&written));
        let body = Reply::encode_batch([(4, &a[..]), (0, &b[..])]);
        let Decoded::Answers(answers) = decode(&body).unwrap() else { panic!("not answers") };
        let [(4, Answer::Rows(raw)), (0, Answer::Other(Reply::Written { epoch: 2, .. }))] = &answers[..] else {
            panic!("{answers:?}")
        };
        // The HTTP answer is exactly what the slave's rows would print as.
        let forwarded = serde_json::to_string(raw).unwrap();
        let Reply::Rows(original) = rows else { unreachable!() };
        assert_eq!(forwarded, serde_json::to_string(&original).unwrap());
    }

    #[test]
    fn a_reply_that_is_not_a_batch_answers_the_whole_batch() {
        let body = encoded(&Reply::Invalid { error: "bad read message".into() });
        assert!(matches!(decode(&body).unwrap(), Decoded::Whole(Reply::Invalid { .. })));
        assert!(decode(b"not json").is_err());
        assert!(decode(br#"{"kind":"batch","answers":[[0,{"kind":"nonsense"}]]}"#).is_err());
    }
}
