//! The user's failure (seeds/000) as a benchmark: one healthy studio alone
//! against a two-studio pool whose second studio is black-holed (network
//! namespaces, root). Prints the table the user's report had, measured here.
//!
//!   cargo bench --bench reliability [-- SECONDS_PER_LEVEL]

#[path = "../tests/support/mod.rs"]
mod support;

use support::{netlab, seed000};

fn main() {
    let secs: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10.0);
    if let Some(why) = netlab::unavailable() {
        println!("skipped: {why}");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let o = rt.block_on(seed000::run(secs));
    println!(
        "Seed 000 reproduction: two studios (6 slots, 30 tok/s, 250 ms TTFT), the second black-holed"
    );
    println!("after Baton saw it healthy ({secs} s per level, 24-token streamed answers).\n");
    println!(
        "| Concurrency | One studio req/s | Pool req/s | Speedup | One studio avg | Pool avg | Pool failed |"
    );
    println!("|---|---|---|---|---|---|---|");
    for l in &o.levels {
        println!(
            "| {} | {:.2} | {:.2} | {:.2}x | {:.2} s | {:.2} s | {} |",
            l.concurrency,
            l.alone.window_requests_per_second(),
            l.pool.window_requests_per_second(),
            l.pool.window_requests_per_second() / l.alone.window_requests_per_second(),
            l.alone.mean_latency_ms() / 1000.0,
            l.pool.mean_latency_ms() / 1000.0,
            l.pool.failed
        );
    }
    println!(
        "\nThe user's report: 0.94x at concurrency 6 and 0.59x at 12, 8.14 s average responses."
    );
    println!(
        "Ejected {:.2} s after the black hole; readmitted {} after the link came back; then served {:.0}% ({} failed).",
        o.ejected_after.as_secs_f64(),
        o.readmitted_after
            .map(|d| format!("{:.2} s", d.as_secs_f64()))
            .unwrap_or_else(|| "never (within 20 s)".into()),
        o.share_after * 100.0,
        o.failed_after
    );
}
