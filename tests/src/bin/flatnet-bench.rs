//! `flatnet-bench`: Flatnet (release shim + release flatnetd) against the reference `bridge` +
//! `host-local` plugins in one run, taking turns; prints the table and writes BENCHMARKS.md.
//! Run it with `sudo tests/bench.sh` (see `--help`). The code lives in `tests/src/bench/`.

#[path = "../bench/mod.rs"]
mod bench;

fn main() -> std::process::ExitCode {
    bench::main()
}
