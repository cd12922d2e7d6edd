//! `flatnet-bench`: Flatnet (release shim + release flatnetd) against the reference `bridge` +
//! `host-local` plugins in one run, taking turns; prints the table and writes BENCHMARKS.md.
//! Run it with `sudo tests/bench.sh` (see `--help`). The code is `flatnet_tests::bench`.

fn main() -> std::process::ExitCode {
    flatnet_tests::bench::main()
}
