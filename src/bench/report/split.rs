//! Where a request's time went, in milliseconds: one type for one answer
//! (as its studio reported it), a studio over a run (means over the
//! answers that reported) and the pool at one level (the diagnosis's).
//!
//! The three used to be three types repeating the same fields. Their JSON
//! is kept byte for byte, key order included, so the serializer is written
//! out: a pool's split (it has a `concurrency`: levels start at 1) reads
//! from the client inward and calls the studio's queue `studio_queue_ms`;
//! an answer's and a studio's run in the order the studio spends the time.

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

/// Where a request's time went. Every figure is optional: studios report
/// different parts, and a figure nobody measured is absent, not zero (a
/// missing key reads as `None`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct TimeSplit {
    /// The level this is the pool's split at (levels start at 1); 0 for
    /// an answer's or a studio's split, and then not written.
    #[serde(default)]
    pub concurrency: usize,
    /// Whose timings: `llama.cpp timings`, `LM Studio stats`, `Ollama
    /// durations` or `vLLM /metrics`; `None` for a pool measured from the
    /// client's side only.
    pub source: Option<String>,
    /// How many answers a studio's means are over; `None` for one answer.
    pub requests: Option<u64>,
    /// Waiting in Baton's queue for a free slot (the pool's split).
    pub baton_queue_ms: Option<f64>,
    /// The client's end-to-end time minus the studio's: network, HTTP,
    /// Baton, and any queueing the studio does not count.
    pub outside_ms: Option<f64>,
    /// Waiting inside the studio for its model runner or a slot.
    #[serde(alias = "studio_queue_ms")]
    pub queue_ms: Option<f64>,
    pub load_ms: Option<f64>,
    pub prefill_ms: Option<f64>,
    pub decode_ms: Option<f64>,
    /// Time to first token (the studio's: queue, load and prefill it
    /// counts; the pool's: as the client saw it).
    pub ttft_ms: Option<f64>,
    pub total_ms: Option<f64>,
    pub tokens_per_second: Option<f64>,
}

impl Serialize for TimeSplit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("TimeSplit", 12)?;
        let t = self;
        if t.concurrency > 0 {
            st.serialize_field("concurrency", &t.concurrency)?;
            put(&mut st, "source", &t.source)?;
            put(&mut st, "total_ms", &t.total_ms)?;
            put(&mut st, "ttft_ms", &t.ttft_ms)?;
            put(&mut st, "baton_queue_ms", &t.baton_queue_ms)?;
            put(&mut st, "outside_ms", &t.outside_ms)?;
            put(&mut st, "studio_queue_ms", &t.queue_ms)?;
            put(&mut st, "load_ms", &t.load_ms)?;
            put(&mut st, "prefill_ms", &t.prefill_ms)?;
            put(&mut st, "decode_ms", &t.decode_ms)?;
            // Never set on a pool's split today; written rather than lost.
            put(&mut st, "requests", &t.requests)?;
            put(&mut st, "tokens_per_second", &t.tokens_per_second)?;
        } else {
            put(&mut st, "source", &t.source)?;
            put(&mut st, "requests", &t.requests)?;
            put(&mut st, "queue_ms", &t.queue_ms)?;
            put(&mut st, "load_ms", &t.load_ms)?;
            put(&mut st, "prefill_ms", &t.prefill_ms)?;
            put(&mut st, "decode_ms", &t.decode_ms)?;
            put(&mut st, "ttft_ms", &t.ttft_ms)?;
            put(&mut st, "total_ms", &t.total_ms)?;
            put(&mut st, "outside_ms", &t.outside_ms)?;
            put(&mut st, "tokens_per_second", &t.tokens_per_second)?;
            // Never set on a studio's split today; written rather than lost.
            put(&mut st, "baton_queue_ms", &t.baton_queue_ms)?;
        }
        st.end()
    }
}

/// A field when it has a value; nothing at all when it has none.
fn put<S: SerializeStruct, T: Serialize>(
    st: &mut S,
    key: &'static str,
    v: &Option<T>,
) -> Result<(), S::Error> {
    match v {
        Some(v) => st.serialize_field(key, v),
        None => st.skip_field(key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_figure() -> TimeSplit {
        TimeSplit {
            concurrency: 0,
            source: Some("Ollama durations".into()),
            requests: None,
            baton_queue_ms: None,
            outside_ms: None,
            queue_ms: Some(1.5),
            load_ms: Some(2.0),
            prefill_ms: Some(3.0),
            decode_ms: Some(4.0),
            ttft_ms: Some(5.0),
            total_ms: Some(6.0),
            tokens_per_second: Some(7.0),
        }
    }

    // The expected strings are what the three types this one replaced
    // wrote (`ServerTimings`, `ServerSplit`, the diagnosis's `TimeSplit`).

    #[test]
    fn an_answers_timings_keep_their_keys_and_order() {
        let t = every_figure();
        let json = r#"{"source":"Ollama durations","queue_ms":1.5,"load_ms":2.0,"prefill_ms":3.0,"decode_ms":4.0,"ttft_ms":5.0,"total_ms":6.0,"tokens_per_second":7.0}"#;
        assert_eq!(serde_json::to_string(&t).unwrap(), json);
        assert_eq!(serde_json::from_str::<TimeSplit>(json).unwrap(), t);
    }

    #[test]
    fn a_studios_split_keeps_its_keys_and_order() {
        let t = TimeSplit {
            requests: Some(12),
            outside_ms: Some(0.25),
            ..every_figure()
        };
        let json = r#"{"source":"Ollama durations","requests":12,"queue_ms":1.5,"load_ms":2.0,"prefill_ms":3.0,"decode_ms":4.0,"ttft_ms":5.0,"total_ms":6.0,"outside_ms":0.25,"tokens_per_second":7.0}"#;
        assert_eq!(serde_json::to_string(&t).unwrap(), json);
        assert_eq!(serde_json::from_str::<TimeSplit>(json).unwrap(), t);
        // A studio that reports little writes little.
        let sparse = TimeSplit {
            source: Some("llama.cpp timings".into()),
            requests: Some(1),
            prefill_ms: Some(3.0),
            ..TimeSplit::default()
        };
        assert_eq!(
            serde_json::to_string(&sparse).unwrap(),
            r#"{"source":"llama.cpp timings","requests":1,"prefill_ms":3.0}"#
        );
    }

    #[test]
    fn the_pools_split_keeps_its_keys_order_and_studio_queue_name() {
        let t = TimeSplit {
            concurrency: 4,
            baton_queue_ms: Some(0.5),
            outside_ms: Some(0.25),
            tokens_per_second: None,
            ..every_figure()
        };
        let json = r#"{"concurrency":4,"source":"Ollama durations","total_ms":6.0,"ttft_ms":5.0,"baton_queue_ms":0.5,"outside_ms":0.25,"studio_queue_ms":1.5,"load_ms":2.0,"prefill_ms":3.0,"decode_ms":4.0}"#;
        assert_eq!(serde_json::to_string(&t).unwrap(), json);
        assert_eq!(serde_json::from_str::<TimeSplit>(json).unwrap(), t);
        // Measured from the client's side only: no source, no phases.
        let bare = TimeSplit {
            concurrency: 1,
            total_ms: Some(130.0),
            ..TimeSplit::default()
        };
        assert_eq!(
            serde_json::to_string(&bare).unwrap(),
            r#"{"concurrency":1,"total_ms":130.0}"#
        );
    }
}
