//! Benchmarks: the closed-loop load runner, the results file, the sweep
//! orchestration behind `baton bench`, each studio measured alone, the
//! diagnosis, the scaling sweep's figures, the capacity search under a
//! service level, the HTML report, and `baton compare`.

pub mod capacity;
pub mod compare;
pub mod diagnose;
pub mod html;
pub mod load;
pub mod probe;
pub mod report;
pub mod run;
pub mod scaling;
