//! `husk run`: one container in a fresh sandbox, in the foreground: stdio streamed,
//! signals forwarded, the container's exit status as husk's, nothing left behind.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use husk_protocol::StdioConfig;

use super::foreground::SignalTarget;
use super::{Context, SandboxFlags};
use crate::container::{self, Launch};
use crate::spec::{self, ProcessOverrides};
use crate::state::StateRoot;
use crate::stdio::{HostStdio, RawTerminal};
use crate::storage::{self, Cache, RootfsSource};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// An OCI bundle (config.json and its rootfs)
    #[arg(long, conflicts_with_all = ["image", "rootfs"])]
    bundle: Option<PathBuf>,
    /// An OCI image: an image-layout directory or tar [default: the busybox image the
    /// set-up builds]
    #[arg(long, conflicts_with = "rootfs")]
    image: Option<PathBuf>,
    /// Which image of a layout holding several (its ref name)
    #[arg(long, requires = "image")]
    reference: Option<String>,
    /// A directory to use as the root file system (never written: writes go to an
    /// overlay)
    #[arg(long)]
    rootfs: Option<PathBuf>,
    /// Give the container a terminal
    #[arg(short = 't', long)]
    tty: bool,
    /// Pass husk's stdin to the container
    #[arg(short = 'i', long)]
    interactive: bool,
    #[command(flatten)]
    sandbox: SandboxFlags,
    /// An environment variable for the process, KEY=VALUE (repeatable)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<String>,
    /// Run as UID[:GID]
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// The container's id [default: husk-run-<pid>]
    #[arg(long)]
    name: Option<String>,
    /// The command and its arguments [default: the image's]
    #[arg(last = true)]
    command: Vec<String>,
}

fn parse_env(pair: &str) -> Result<String, String> {
    match pair.split_once('=') {
        Some((key, _)) if !key.is_empty() => Ok(pair.to_owned()),
        _ => Err(format!("{pair:?} is not KEY=VALUE")),
    }
}

/// The image `husk run` uses when given no root file system.
pub fn default_image() -> PathBuf {
    crate::guest::cache_dir().join("images/busybox.tar")
}

pub fn run(context: &Context, args: RunArgs) -> Result<ExitCode, String> {
    // Checked first: a host that cannot boot the guest says so before any work.
    context.hypervisor(args.sandbox.hypervisor)?;
    // From here on a Ctrl-C abandons the start cleanly instead of killing husk halfway.
    let target = SignalTarget::new(args.tty);
    let signals = target.forward()?;
    let result = run_with(context, args, &target);
    signals.close();
    result
}

fn run_with(
    context: &Context,
    args: RunArgs,
    target: &Arc<SignalTarget>,
) -> Result<ExitCode, String> {
    let id = args
        .name
        .clone()
        .unwrap_or_else(|| format!("husk-run-{}", std::process::id()));
    crate::state::check_id(&id).map_err(|e| e.to_string())?;
    let cache = Cache::new(context.cache());
    let overrides = ProcessOverrides {
        command: args.command.clone(),
        env: args.env.clone(),
        user: args.user.clone(),
        terminal: args.tty,
        hostname: None,
    };
    let (spec, source, bundle) = match (&args.bundle, &args.rootfs) {
        (Some(bundle), _) => {
            let (mut spec, rootfs) = spec::load_bundle(bundle).map_err(|e| e.to_string())?;
            spec::apply_overrides(&mut spec, &overrides).map_err(|e| e.to_string())?;
            let source = RootfsSource::Directory {
                path: rootfs,
                shared: false,
            };
            (spec, source, bundle.clone())
        }
        (None, Some(rootfs)) => {
            if !rootfs.is_dir() {
                return Err(format!(
                    "the root file system {} is not a directory",
                    rootfs.display()
                ));
            }
            let spec = spec::for_image(&Default::default(), &overrides, rootfs)
                .map_err(|e| e.to_string())?;
            let source = RootfsSource::Directory {
                path: rootfs.clone(),
                shared: true,
            };
            (spec, source, context.root.dir(&id))
        }
        (None, None) => {
            let image = args.image.clone().unwrap_or_else(default_image);
            if args.image.is_none() && !image.exists() {
                return Err(format!(
                    "the default image {} is missing: build it with \
                     resources/build-busybox-image.sh, or give --image, --rootfs or --bundle",
                    image.display()
                ));
            }
            let (source, defaults) = storage::image(&cache, &image, args.reference.as_deref())
                .map_err(|e| e.to_string())?;
            let spec =
                spec::for_image(&defaults, &overrides, source.path()).map_err(|e| e.to_string())?;
            (spec, source, context.root.dir(&id))
        }
    };
    let terminal = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    let stdio = StdioConfig {
        stdin: args.interactive,
        stdout: true,
        stderr: true,
        terminal,
    };
    let launch = context.launch(&id, bundle, &spec, source, &args.sandbox, stdio)?;
    if target.interrupt.load(std::sync::atomic::Ordering::SeqCst) {
        return Err("interrupted".into());
    }
    run_launch(&context.root, &launch, args.interactive, target)
}

fn run_launch(
    root: &StateRoot,
    launch: &Launch,
    interactive: bool,
    target: &Arc<SignalTarget>,
) -> Result<ExitCode, String> {
    container::register(launch, root).map_err(|e| e.to_string())?;
    let result = run_held(root, launch, interactive, target);
    // Whatever happened, nothing stays: the sandbox stopped with its holder, and the
    // state goes now.
    if let Err(e) = root.remove(&launch.id) {
        log::warn!("{e}");
    }
    result.map(|code| ExitCode::from(code.clamp(0, 255) as u8))
}

fn run_held(
    root: &StateRoot,
    launch: &Launch,
    interactive: bool,
    target: &Arc<SignalTarget>,
) -> Result<i32, String> {
    let host = HostStdio::inherited(interactive).map_err(|e| e.to_string())?;
    let raw = match launch.stdio.terminal && interactive {
        true => RawTerminal::enter(std::io::stdin().as_fd()).map_err(|e| e.to_string())?,
        false => None,
    };
    let held =
        container::create(launch, root, host, &target.interrupt).map_err(|e| e.to_string())?;
    let agent = held.sandbox().agent().clone();
    target.aim(agent.clone(), &launch.id, None);
    agent
        .start_container(&launch.id)
        .map_err(|e| format!("starting the container: {e}"))?;
    {
        let _lock = root.lock(&launch.id).map_err(|e| e.to_string())?;
        if let Ok(mut state) = root.load(&launch.id) {
            state.status = crate::state::Status::Running;
            let _ = root.save(&state);
        }
    }
    let code = held
        .wait(root)
        .map(|exit| exit.code)
        .map_err(|e| e.to_string());
    drop(raw);
    code
}
