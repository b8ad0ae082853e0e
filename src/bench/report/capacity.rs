//! The capacity search as the results file keeps it (`--mode capacity`):
//! the service level asked for, the largest concurrency that met it, each
//! point the search measured, each studio's own capacity alone and what the
//! pool would serve without a studio or with one more like it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_with::skip_serializing_none;

/// The service level each agent must get. An absent limit is not applied.
#[skip_serializing_none]
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    /// 95 of 100 first tokens arrive within this many milliseconds.
    pub ttft_p95_ms: Option<f64>,
    /// Half the answers or more stream at least this many tokens per second
    /// (after their first token).
    pub tokens_per_s: Option<f64>,
}

/// What stopped the pool from serving more agents at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitedBy {
    /// First tokens came later than the limit (p95).
    TtftP95,
    /// Answers streamed slower than the limit (median).
    TokensPerS,
    /// More than 1% of the requests failed.
    Errors,
    /// Nothing failed up to the highest concurrency the search tries.
    SearchCeiling,
}

impl LimitedBy {
    /// In words, for sentences: "limited by time to first token".
    pub fn words(self) -> &'static str {
        match self {
            LimitedBy::TtftP95 => "time to first token",
            LimitedBy::TokensPerS => "tokens per second per answer",
            LimitedBy::Errors => "failed requests",
            LimitedBy::SearchCeiling => "the search's ceiling (nothing failed up to it)",
        }
    }
}

/// One concurrency the search measured.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CapacityPoint {
    pub concurrency: usize,
    /// Every limit of the service level was met.
    pub meets: bool,
    /// The limits missed, worst first (empty when it meets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub misses: Vec<LimitedBy>,
    pub ttft_p95_ms: f64,
    /// The median answer's streaming rate after its first token.
    pub tokens_per_s_p50: f64,
    /// Answers per second.
    pub rps: f64,
    /// Answers per second that met every limit themselves.
    pub goodput_rps: f64,
    /// Output tokens per second of the whole pool.
    pub output_tokens_per_s: f64,
    pub requests: u64,
    pub failed: u64,
}

/// One studio's capacity alone (measured directly, under the same level).
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StudioCapacity {
    pub id: String,
    /// Declared `max_concurrent_requests`.
    pub slots: u32,
    pub max_concurrency: usize,
    pub goodput_rps: f64,
    pub limited_by: Option<LimitedBy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub points: Vec<CapacityPoint>,
    /// Why it could not be measured.
    pub error: Option<String>,
}

/// A change to the pool whose capacity is predicted.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Change {
    /// The pool without this studio.
    Without(String),
    /// The pool with one more studio like this one.
    PlusOneLike(String),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Without(id) => write!(f, "without {id}"),
            Change::PlusOneLike(id) => write!(f, "plus one like {id}"),
        }
    }
}

impl FromStr for Change {
    type Err = String;

    fn from_str(s: &str) -> Result<Change, String> {
        if let Some(id) = s.strip_prefix("without ") {
            Ok(Change::Without(id.to_string()))
        } else if let Some(id) = s.strip_prefix("plus one like ") {
            Ok(Change::PlusOneLike(id.to_string()))
        } else {
            Err(format!(
                "unknown change `{s}`: expected \"without ID\" or \"plus one like ID\""
            ))
        }
    }
}

// As the sentence the user reads: "without mac-2", "plus one like mac-1".
impl Serialize for Change {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Change {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Change, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A predicted capacity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WhatIf {
    pub change: Change,
    pub max_concurrency: usize,
    pub goodput_rps: f64,
}

/// This pool's capacity as predicted from its studios alone, against what
/// was measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub max_concurrency: usize,
    pub goodput_rps: f64,
    /// (measured - predicted) / predicted, in percent.
    pub error_pct: f64,
}

/// An earlier run's prediction for part of its pool, checked by measuring
/// that part (`--only`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checked {
    /// The run over the whole pool the prediction comes from.
    pub run_id: i64,
    /// The studios measured now.
    pub studios: Vec<String>,
    /// The sum of what those studios served alone in that run.
    pub predicted: usize,
    pub measured: usize,
    /// (measured - predicted) / predicted, in percent.
    pub error_pct: f64,
}

/// The capacity of the pool under a service level.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    pub slo: Slo,
    /// The most agents (requests at once) served within every limit; 0
    /// when even one is not.
    pub max_concurrency: usize,
    /// Answers per second that met every limit, at `max_concurrency`.
    pub goodput_rps: f64,
    /// The pool's output tokens per second at `max_concurrency`.
    pub tokens_per_s: f64,
    pub limited_by: Option<LimitedBy>,
    /// In the order measured: doubling, then bisecting.
    #[serde(default)]
    pub points: Vec<CapacityPoint>,
    #[serde(default)]
    pub per_studio: Vec<StudioCapacity>,
    #[serde(default)]
    pub what_if: Vec<WhatIf>,
    pub predicted: Option<Prediction>,
    /// The studio that adds the fewest agents per declared slot.
    pub least_per_slot: Option<String>,
    /// A run over part of the pool: the whole pool's prediction for it.
    pub checked: Option<Checked>,
    /// Points too short for a p95, a search cut short.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_reads_and_writes_as_the_sentence_the_user_sees() {
        let w = WhatIf {
            change: Change::PlusOneLike("mac-1".into()),
            max_concurrency: 14,
            goodput_rps: 3.5,
        };
        let v = serde_json::to_value(&w).unwrap();
        assert_eq!(v["change"], "plus one like mac-1");
        let back: WhatIf = serde_json::from_value(v).unwrap();
        assert_eq!(back, w);
        let without: Change = serde_json::from_str("\"without mac-2\"").unwrap();
        assert_eq!(without, Change::Without("mac-2".into()));
        let err = serde_json::from_str::<Change>("\"minus mac-2\"").unwrap_err();
        assert!(err.to_string().contains("plus one like ID"), "{err}");
    }

    #[test]
    fn limits_are_typed_words_in_the_file() {
        let p = CapacityPoint {
            misses: vec![LimitedBy::TtftP95, LimitedBy::TokensPerS],
            ..CapacityPoint::default()
        };
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["misses"], serde_json::json!(["ttft_p95", "tokens_per_s"]));
        let slo = serde_json::to_value(Slo {
            ttft_p95_ms: Some(2000.0),
            tokens_per_s: None,
        })
        .unwrap();
        assert_eq!(slo, serde_json::json!({"ttft_p95_ms": 2000.0}));
    }
}
