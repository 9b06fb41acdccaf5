//! The `husk` command line.

mod foreground;
mod info;
mod oci;
mod run;
mod vmm;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

use husk_protocol::StdioConfig;

use crate::config::Config;
use crate::container::Launch;
use crate::hypervisor::Kind;
use crate::logger::LogFormat;
use crate::state::{StateRoot, DEFAULT_ROOT};
use crate::storage::RootfsSource;

#[derive(Parser)]
#[command(name = "husk", version, about = "husk: containers in microVMs")]
struct Cli {
    /// Where container state lives [default: `root` in the configuration, else /run/husk]
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// Write husk's own log to this file instead of stderr
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// The log's format
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command in a container in a fresh sandbox, and exit with its status.
    Run(Box<run::RunArgs>),
    /// Create a container from an OCI bundle: its sandbox starts, its process waits.
    Create(oci::CreateArgs),
    /// Let a created container's process run.
    Start(oci::IdArgs),
    /// Print a container's OCI state as JSON.
    State(oci::IdArgs),
    /// Send a signal to a container's process (or, with --all, to all its processes).
    Kill(oci::KillArgs),
    /// Remove a stopped container (with --force: any container) and its sandbox.
    Delete(oci::DeleteArgs),
    /// Run another process in a running container.
    Exec(Box<oci::ExecArgs>),
    /// List containers.
    List(oci::ListArgs),
    /// List a container's processes (pids as its sandbox sees them).
    Ps(oci::PsArgs),
    /// Boot a bare VM: a kernel, an initrd and a command line, no containers.
    Vmm(Box<vmm::VmmArgs>),
    /// Print what this host offers husk, as JSON.
    Info,
    /// (internal) Hold a created container's sandbox; started by `husk create`.
    #[command(hide = true)]
    SandboxProcess(oci::SandboxProcessArgs),
}

/// Exit status for an error of the user's input or the host (bad argument, missing file,
/// no KVM).
const EXIT_ERROR: u8 = 1;
/// Exit status when the guest ended badly (triple fault, KVM internal error).
const EXIT_GUEST_FAILED: u8 = 2;

/// What every command that works with containers needs: the configuration file's
/// settings and the state root.
pub struct Context {
    pub config: Config,
    pub root: StateRoot,
}

impl Context {
    /// The backend to use: the flag, else the configuration, else builtin where this
    /// host can boot the guest. Never a silent fallback to the host backend.
    pub fn hypervisor(&self, flag: Option<Kind>) -> Result<Kind, String> {
        if let Some(kind) = flag.or(self.config.hypervisor) {
            return Ok(kind);
        }
        match husk_vmm::kvm_flavour() {
            husk_vmm::KvmFlavour::Hardware => Ok(Kind::Builtin),
            flavour => Err(format!(
                "this host cannot boot the guest with the builtin hypervisor ({}); choose \
                 --hypervisor host to run the containers in namespaces on this host, with \
                 no VM (or set hypervisor = \"host\" in {})",
                match flavour {
                    husk_vmm::KvmFlavour::Pvm => {
                        "its /dev/kvm is PVM, which boots only PVM guest kernels"
                    }
                    _ => "it has no hardware KVM (kvm_intel or kvm_amd)",
                },
                crate::config::DEFAULT_CONFIG_PATH
            )),
        }
    }

    pub fn cache(&self) -> PathBuf {
        self.config
            .cache
            .clone()
            .unwrap_or_else(crate::guest::cache_dir)
    }

    pub fn kernel(&self) -> PathBuf {
        self.config
            .kernel
            .clone()
            .unwrap_or_else(crate::guest::default_kernel)
    }

    pub fn initrd(&self) -> PathBuf {
        self.config
            .initrd
            .clone()
            .unwrap_or_else(crate::guest::default_initrd)
    }

    /// A launch of `spec` over `rootfs`, with the sandbox settings of the flags, else the
    /// configuration, else the defaults.
    pub fn launch(
        &self,
        id: &str,
        bundle: PathBuf,
        spec: &oci_spec::runtime::Spec,
        rootfs: RootfsSource,
        sandbox: &SandboxFlags,
        stdio: StdioConfig,
    ) -> Result<Launch, String> {
        Ok(Launch {
            id: id.to_owned(),
            bundle,
            spec: serde_json::to_value(spec).map_err(|e| e.to_string())?,
            rootfs,
            annotations: spec
                .annotations()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            hypervisor: self.hypervisor(sandbox.hypervisor)?,
            kernel: self.kernel(),
            initrd: self.initrd(),
            memory_mib: sandbox
                .mem_mib
                .or(self.config.memory_mib)
                .unwrap_or(DEFAULT_MEMORY_MIB),
            vcpus: sandbox.vcpus.or(self.config.vcpus).unwrap_or(1),
            cache: self.cache(),
            stdio,
            hostname: spec.hostname().clone(),
            console_socket: None,
        })
    }
}

/// Guest memory when neither the flag nor the configuration says.
pub const DEFAULT_MEMORY_MIB: u64 = 256;

/// The sandbox's flags, shared by `run` and `create`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SandboxFlags {
    /// builtin (a microVM) or host (namespaces on this host, no VM) [default:
    /// configuration, else builtin where the host has hardware KVM]
    #[arg(long, value_enum)]
    pub hypervisor: Option<Kind>,
    /// Guest memory in MiB [default: configuration, else 256]
    #[arg(long)]
    pub mem_mib: Option<u64>,
    /// vCPUs [default: configuration, else 1]
    #[arg(long)]
    pub vcpus: Option<u8>,
}

pub fn main(start: Instant) -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = crate::logger::init(None, LogFormat::Text);
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One line, like every other husk error, instead of clap's usage block.
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("husk: error: {first} (see husk --help)");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let logs_to_file = cli.log.is_some();
    if let Err(e) = crate::logger::init(cli.log.as_deref(), cli.log_format) {
        eprintln!("husk: error: {e}");
        return ExitCode::from(EXIT_ERROR);
    }
    let context = || -> Result<Context, String> {
        let config = Config::load().map_err(|e| e.to_string())?;
        let root = cli
            .root
            .clone()
            .or_else(|| config.root.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
        Ok(Context {
            config,
            root: StateRoot::new(root),
        })
    };
    let result = match cli.command {
        Command::Vmm(args) => vmm::run(*args, start),
        Command::Info => info::run(),
        Command::Run(args) => context().and_then(|c| run::run(&c, *args)),
        Command::Create(args) => context().and_then(|c| oci::create(&c, args)),
        Command::Start(args) => context().and_then(|c| oci::start(&c, args)),
        Command::State(args) => context().and_then(|c| oci::state(&c, args)),
        Command::Kill(args) => context().and_then(|c| oci::kill(&c, args)),
        Command::Delete(args) => context().and_then(|c| oci::delete(&c, args)),
        Command::Exec(args) => context().and_then(|c| oci::exec(&c, *args)),
        Command::List(args) => context().and_then(|c| oci::list(&c, args)),
        Command::Ps(args) => context().and_then(|c| oci::ps(&c, args)),
        Command::SandboxProcess(args) => context().and_then(|c| oci::sandbox_process(&c, args)),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            log::error!("{message}");
            // The log file is for the tool that drives husk; a person sees the error too.
            if logs_to_file {
                eprintln!("husk: error: {message}");
            }
            ExitCode::from(EXIT_ERROR)
        }
    }
}
