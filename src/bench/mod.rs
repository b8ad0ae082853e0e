//! Benchmarks: the closed-loop load runner, the results file, the sweep
//! orchestration behind `baton bench`, and `baton compare`.

pub mod compare;
pub mod load;
pub mod report;
pub mod run;
