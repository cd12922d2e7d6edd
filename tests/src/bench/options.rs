//! The benchmark's command line.

use std::path::PathBuf;

pub const USAGE: &str = "usage: flatnet-bench [--quick] [--n N] [--cycles N] [--podman-runs N]
                     [--version-runs N] [--allocs N] [--gateway-containers N]
                     [--gateway-cycles N] [--no-podman] [--output PATH | --no-write]

Run as root (tests/bench.sh builds the release binaries and does that). Compares Flatnet (the
release flatnet shim and flatnetd next to this binary, or in $FLATNET_BIN_DIR) with
/usr/lib/cni/bridge + host-local in one run, prints a table and writes BENCHMARKS.md.

  --quick            smoke run (n=30, 64 cycles, 3 podman runs, 1,000 allocations, 5 gateway
                     containers and 10 gateway cycles); does not write BENCHMARKS.md unless
                     --output is given
  --n N              sequential ADD/CHECK/DEL per plugin (default 200)
  --cycles N         attach+detach cycles per plugin and parallelism (default 400)
  --podman-runs N    podman run --rm per network mode (default 90)
  --version-runs N   VERSION calls per plugin (default 200)
  --allocs N         attachments for the memory and start-up test, a multiple of 100, at most
                     16,000 (default 10,000)
  --gateway-containers N
                     containers timed from listening to the first 200 through each gateway,
                     then across a flatnetd restart and on removal (default 50)
  --gateway-cycles N add/remove cycles beside the gateways' steady request loop (default 100)
  --no-podman        skip the Podman measurements (podman run --rm, Podman 5, the gateway)
  --output PATH      where to write the report (default: BENCHMARKS.md at the repository root)
  --no-write         only print";

/// The benchmark's command line.
#[derive(Debug)]
pub struct Options {
    pub quick: bool,
    pub n: usize,
    pub cycles: usize,
    pub podman_runs: usize,
    pub version_runs: usize,
    pub allocs: usize,
    pub gateway_containers: usize,
    pub gateway_cycles: usize,
    pub podman: bool,
    pub output: Option<PathBuf>,
    pub write: bool,
}

impl Options {
    pub fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
        let args: Vec<String> = args.collect();
        let quick = args.iter().any(|a| a == "--quick");
        let mut o = Options {
            quick,
            n: if quick { 30 } else { 200 },
            cycles: if quick { 64 } else { 400 },
            // The share is a difference of two medians of runs about 100 ms long: with 45 runs of
            // each, the `--network none` median alone moved by 4 ms between two runs an hour apart.
            podman_runs: if quick { 3 } else { 90 },
            version_runs: if quick { 50 } else { 200 },
            allocs: if quick { 1_000 } else { 10_000 },
            gateway_containers: if quick { 5 } else { 50 },
            gateway_cycles: if quick { 10 } else { 100 },
            podman: true,
            output: None,
            write: !quick,
        };
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let mut number = |name: &str| -> Result<usize, String> {
                let v = it.next().ok_or(format!("{name} needs a number"))?;
                v.parse()
                    .map_err(|_| format!("{name} needs a number, not {v:?}"))
            };
            match arg.as_str() {
                "--quick" => {}
                "--n" => o.n = number("--n")?,
                "--cycles" => o.cycles = number("--cycles")?,
                "--podman-runs" => o.podman_runs = number("--podman-runs")?,
                "--version-runs" => o.version_runs = number("--version-runs")?,
                "--allocs" => o.allocs = number("--allocs")?,
                "--gateway-containers" => o.gateway_containers = number("--gateway-containers")?,
                "--gateway-cycles" => o.gateway_cycles = number("--gateway-cycles")?,
                "--no-podman" => o.podman = false,
                "--no-write" => o.write = false,
                "--output" => {
                    o.output = Some(PathBuf::from(it.next().ok_or("--output needs a path")?));
                    o.write = true;
                }
                "-h" | "--help" => return Err(String::new()),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if o.n == 0 || o.cycles < 2 || o.version_runs == 0 {
            return Err("--n and --version-runs must be at least 1, --cycles at least 2".into());
        }
        if !(100..=16_000).contains(&o.allocs) || o.allocs / 100 * 100 != o.allocs {
            return Err("--allocs must be a multiple of 100 between 100 and 16,000".into());
        }
        Ok(o)
    }
}
