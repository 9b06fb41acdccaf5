//! `husk run` benchmark (issue 5): `echo hello` in busybox with the host backend, from
//! the busybox OCI image with a cold cache (emptied before each run) and a warm one, and
//! from a bundle, against `runc run` of the same bundle; N runs of each, interleaved;
//! medians and the ratios to runc.
//!
//!     cargo run --release -p husk-tests --bin bench-run -- --runs 20
//!
//! As root, with runc installed and the image built (resources/build-busybox-image.sh).
//! Every run must print `hello` and exit 0, or the benchmark fails. The husk binary is the
//! one of this build profile (with husk-agent next to it), or $HUSK_BIN.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use husk_tests::husk::husk_command;
use husk_tests::process::run_with_timeout;
use husk_tests::rootfs::busybox_bundle;
use husk_tests::{scratch_dir, Error};

const USAGE: &str = "usage: bench-run [--runs N (default 10)] [--image PATH (default \
                     /var/cache/husk/images/busybox.tar)] [--runc PATH (default runc)]";

struct Options {
    runs: usize,
    image: PathBuf,
    runc: PathBuf,
}

fn parse_options() -> Result<Options, Error> {
    let cache = std::env::var_os("HUSK_CACHE_DIR").map_or("/var/cache/husk".into(), PathBuf::from);
    let mut options = Options {
        runs: 10,
        image: cache.join("images/busybox.tar"),
        runc: PathBuf::from("runc"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| Error(format!("{name} needs a value\n{USAGE}")))
        };
        match arg.as_str() {
            "--runs" => {
                let v = value("--runs")?;
                options.runs =
                    v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        Error(format!("--runs wants a positive number, not `{v}`"))
                    })?
            }
            "--image" => options.image = PathBuf::from(value("--image")?),
            "--runc" => options.runc = PathBuf::from(value("--runc")?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(Error(format!("unknown argument `{other}`\n{USAGE}"))),
        }
    }
    Ok(options)
}

/// Runs `cmd`, which must print exactly `hello` and exit 0; returns its wall time.
fn timed(mut cmd: Command, what: &str) -> Result<Duration, Error> {
    let start = Instant::now();
    let run = run_with_timeout(&mut cmd, Duration::from_secs(60))?;
    let elapsed = start.elapsed();
    if run.code() != Some(0) || run.stdout != "hello\n" {
        return Err(Error(format!(
            "{what}: not a valid run\n{}",
            run.describe()
        )));
    }
    Ok(elapsed)
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn bench(options: &Options) -> Result<(), Error> {
    if !options.image.is_file() {
        return Err(Error(format!(
            "no image {}: build it with resources/build-busybox-image.sh",
            options.image.display()
        )));
    }
    let dir = scratch_dir("bench-run")?;
    let bundle = dir.join("bundle");
    busybox_bundle(&bundle, &["echo", "hello"])?;
    let config = dir.join("config.toml");
    let write = |cache: &Path| {
        std::fs::write(
            &config,
            format!(
                "hypervisor = \"host\"\nroot = \"{}\"\ncache = \"{}\"\n",
                dir.join("state").display(),
                cache.display()
            ),
        )
        .map_err(|e| Error(format!("writing {}: {e}", config.display())))
    };
    let husk = |args: &[&str]| -> Result<Command, Error> {
        let mut cmd = husk_command()?;
        cmd.env("HUSK_CONFIG", &config)
            .env("HUSK_LOG", "warn")
            .args(args);
        Ok(cmd)
    };
    let image = options.image.to_string_lossy().into_owned();
    let bundle_arg = bundle.to_string_lossy().into_owned();
    let (cold_cache, warm_cache) = (dir.join("cold-cache"), dir.join("warm-cache"));
    // The warm cache is filled once before measuring.
    write(&warm_cache)?;
    timed(
        husk(&["run", "--image", &image, "--", "echo", "hello"])?,
        "warm-up",
    )?;

    let (mut cold, mut warm, mut from_bundle, mut runc) = (vec![], vec![], vec![], vec![]);
    for n in 0..options.runs {
        let _ = std::fs::remove_dir_all(&cold_cache);
        write(&cold_cache)?;
        cold.push(timed(
            husk(&["run", "--image", &image, "--", "echo", "hello"])?,
            "husk run, cold cache",
        )?);
        write(&warm_cache)?;
        warm.push(timed(
            husk(&["run", "--image", &image, "--", "echo", "hello"])?,
            "husk run, warm cache",
        )?);
        from_bundle.push(timed(
            husk(&["run", "--bundle", &bundle_arg])?,
            "husk run --bundle",
        )?);
        let mut cmd = Command::new(&options.runc);
        cmd.arg("--root").arg(dir.join("runc")).args([
            "run",
            "--bundle",
            &bundle_arg,
            &format!("bench-{n}"),
        ]);
        runc.push(timed(cmd, "runc run")?);
    }
    let runc_ms = ms(median(&mut runc));
    println!("husk run of `echo hello` (host backend) vs runc run of the same bundle, {} runs each, medians:", options.runs);
    println!("| | median (ms) | vs runc |");
    println!("|---|---|---|");
    for (what, samples) in [
        ("husk run --image busybox, cold cache", &mut cold),
        ("husk run --image busybox, warm cache", &mut warm),
        ("husk run --bundle", &mut from_bundle),
    ] {
        let m = ms(median(samples));
        println!("| {what} | {m:.1} | {:.2} |", m / runc_ms);
    }
    println!("| runc run --bundle | {runc_ms:.1} | 1.00 |");
    Ok(())
}

fn main() -> ExitCode {
    match parse_options().and_then(|o| bench(&o)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-run: {}", e.0);
            ExitCode::FAILURE
        }
    }
}
