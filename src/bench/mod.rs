//! Load generation and measurement. `load` is the closed-loop runner that
//! the balancer benchmarks use today and `baton bench` will build on.

pub mod load;
