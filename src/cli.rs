//! The command line: `copy` runs the engine once without a cluster, `controller` runs the
//! operator, and `crd` prints the CustomResourceDefinition.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::copy::{
    self, ConnectOptions, CopyReport, CopyRequest, DockerConfig, ForeignLayers, ImageRef,
    PlatformFilter, Progress, UploadMode,
};
use crate::telemetry::{self, LogFormat};

#[derive(Parser, Debug)]
#[command(
    name = "pma2docker",
    version,
    about = "Copy multi-architecture images between registries, digest for digest"
)]
pub struct Cli {
    /// Log line format on stderr. The level comes from RUST_LOG.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "PMA2DOCKER_LOG_FORMAT"
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Copy an image index (every platform) or a single manifest from SOURCE to TARGET.
    Copy(CopyArgs),
    /// Run the ImageCopy controller against the cluster of KUBECONFIG or the pod's account.
    Controller(ControllerArgs),
    /// Print the ImageCopy CustomResourceDefinition as JSON, for kubectl apply -f -.
    Crd,
}

#[derive(clap::Args, Debug)]
pub struct ControllerArgs {
    /// Watch ImageCopy objects in this namespace only; all namespaces when unset.
    #[arg(long, env = "PMA2DOCKER_NAMESPACE")]
    pub namespace: Option<String>,

    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(
        long,
        default_value = "0.0.0.0:8080",
        env = "PMA2DOCKER_METRICS_ADDRESS"
    )]
    pub metrics_address: std::net::SocketAddr,

    /// ImageCopy objects reconciled at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,

    /// Blob transfers in flight per copy.
    #[arg(long, default_value_t = copy::DEFAULT_JOBS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
    pub jobs: usize,

    /// Registry host (HOST or HOST:PORT) reached over plain HTTP; repeat for more.
    #[arg(
        long = "plain-http",
        value_name = "HOST",
        value_delimiter = ',',
        env = "PMA2DOCKER_PLAIN_HTTP"
    )]
    pub plain_http: Vec<String>,

    /// Registry host whose TLS certificate is not verified; repeat for more.
    #[arg(
        long = "insecure-tls",
        value_name = "HOST",
        value_delimiter = ',',
        env = "PMA2DOCKER_INSECURE_TLS"
    )]
    pub insecure_tls: Vec<String>,

    /// PEM file of CA certificates trusted in addition to the system roots; repeat for more.
    #[arg(long = "ca-file", value_name = "FILE")]
    pub ca_files: Vec<PathBuf>,

    /// Registry host that ImageCopy objects may use (`*.example.com` for subdomains);
    /// repeat for more. Without any, every host not denied is allowed.
    #[arg(
        long = "allow-registry",
        value_name = "HOST",
        value_delimiter = ',',
        env = "PMA2DOCKER_ALLOW_REGISTRIES"
    )]
    pub allow_registries: Vec<String>,

    /// Registry host that ImageCopy objects may never use; repeat for more.
    #[arg(
        long = "deny-registry",
        value_name = "HOST",
        value_delimiter = ',',
        env = "PMA2DOCKER_DENY_REGISTRIES"
    )]
    pub deny_registries: Vec<String>,

    /// Name of this instance in Events; defaults to the host name (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    pub instance: Option<String>,

    #[command(flatten)]
    pub transfer: TransferArgs,
}

#[derive(clap::Args, Debug)]
pub struct CopyArgs {
    /// Source image: REGISTRY/REPOSITORY[:TAG][@DIGEST]. `nginx` means docker.io/library/nginx:latest.
    pub source: String,

    /// Target image; it must carry a tag, and a digest if given must match the result.
    pub target: String,

    /// Keep only this platform (OS/ARCH[/VARIANT]); repeat for more. The index is then rebuilt
    /// and its digest differs from the source.
    #[arg(long = "platform", value_name = "PLATFORM")]
    pub platforms: Vec<String>,

    /// Docker config.json with registry credentials. Defaults to REGISTRY_AUTH_FILE, then
    /// $DOCKER_CONFIG/config.json, then ~/.docker/config.json, when they exist.
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,

    /// Reach this registry (HOST or HOST:PORT) over plain HTTP; repeat for more.
    #[arg(long = "plain-http", value_name = "HOST")]
    pub plain_http: Vec<String>,

    /// Do not verify the TLS certificate of this registry; repeat for more.
    #[arg(long = "insecure-tls", value_name = "HOST")]
    pub insecure_tls: Vec<String>,

    /// Trust the CA certificates in this PEM file, in addition to the system roots.
    #[arg(long = "ca-file", value_name = "FILE")]
    pub ca_files: Vec<PathBuf>,

    /// Blob and manifest transfers in flight at once.
    #[arg(long, default_value_t = copy::DEFAULT_JOBS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
    pub jobs: usize,

    /// Check every manifest and blob even when the target tag already has the expected digest.
    #[arg(long)]
    pub force: bool,

    #[command(flatten)]
    pub transfer: TransferArgs,

    /// Summary format on stdout.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

/// Blob transfer settings, shared by `copy` and `controller`.
#[derive(clap::Args, Debug)]
pub struct TransferArgs {
    /// Send each blob in one streaming PUT (falling back to chunks when a registry returns
    /// 413), or always in chunks, for registries or proxies that limit request sizes.
    #[arg(long, value_enum, default_value = "streaming")]
    pub upload_mode: UploadModeArg,

    /// Size of one chunk of a chunked upload, in MiB. It bounds the memory of one upload.
    #[arg(long, value_name = "MIB", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub chunk_size_mib: u16,

    /// Copy non-distributable (foreign) layers into the target instead of leaving them out.
    /// They are fetched from the source registry or, failing that, from the URLs the manifest
    /// names, without credentials.
    #[arg(long)]
    pub copy_foreign_layers: bool,
}

impl TransferArgs {
    fn apply(&self, request: &mut CopyRequest) {
        let (upload_mode, chunk_size, foreign_layers) = self.settings();
        request.upload_mode = upload_mode;
        request.chunk_size = chunk_size;
        request.foreign_layers = foreign_layers;
    }

    fn settings(&self) -> (UploadMode, usize, ForeignLayers) {
        let upload_mode = match self.upload_mode {
            UploadModeArg::Streaming => UploadMode::Streaming,
            UploadModeArg::Chunked => UploadMode::Chunked,
        };
        let chunk_size = usize::from(self.chunk_size_mib) * 1024 * 1024;
        let foreign_layers = if self.copy_foreign_layers {
            ForeignLayers::Copy
        } else {
            ForeignLayers::Skip
        };
        (upload_mode, chunk_size, foreign_layers)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum UploadModeArg {
    Streaming,
    Chunked,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Copy(args) => {
            // The copy's error already states why a certificate was rejected.
            telemetry::init(cli.log_format, "warn,rustls_platform_verifier=off");
            run_copy(args).await
        }
        Command::Controller(args) => {
            telemetry::init(
                cli.log_format,
                "info,kube=warn,rustls_platform_verifier=off",
            );
            run_controller(args).await
        }
        Command::Crd => {
            println!("{}", crd_json());
            Ok(())
        }
    }
}

/// Returns the CustomResourceDefinition of ImageCopy as pretty-printed JSON.
pub fn crd_json() -> String {
    use kube::CustomResourceExt;
    let crd = crate::api::ImageCopy::crd();
    serde_json::to_string_pretty(&crd).expect("a CRD always serialises")
}

async fn run_controller(args: ControllerArgs) -> Result<()> {
    let (upload_mode, chunk_size, foreign_layers) = args.transfer.settings();
    let settings = crate::controller::Settings {
        connect: ConnectOptions {
            plain_http: args.plain_http,
            insecure_tls: args.insecure_tls,
            ca_certificates: read_ca_files(&args.ca_files)?,
        },
        allowed_registries: args.allow_registries,
        denied_registries: args.deny_registries,
        jobs: args.jobs,
        concurrency: args.concurrency,
        upload_mode,
        chunk_size,
        foreign_layers,
    };
    let instance = args
        .instance
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "pma2docker".to_string());
    let client = kube::Client::try_default().await.context(
        "failed to configure the Kubernetes client from KUBECONFIG or the pod's account",
    )?;
    let options = crate::controller::RunOptions {
        settings,
        namespace: args.namespace,
        metrics_address: args.metrics_address,
        instance,
    };
    crate::controller::run(client, options).await
}

/// Reads PEM CA files, rejecting a file that contains no valid certificate, so that a wrong
/// path or format fails here rather than as an unknown issuer during a copy.
fn read_ca_files(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>> {
    let mut bundles = Vec::new();
    for path in paths {
        let pem = std::fs::read(path)
            .with_context(|| format!("failed to read CA file {}", path.display()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|_| {
            anyhow::anyhow!(
                "CA file {} is not a valid PEM certificate bundle",
                path.display()
            )
        })?;
        anyhow::ensure!(
            !certificates.is_empty(),
            "CA file {} contains no PEM certificate",
            path.display()
        );
        bundles.push(pem);
    }
    Ok(bundles)
}
async fn run_copy(args: CopyArgs) -> Result<()> {
    let request = build_request(&args)?;
    let progress = Arc::new(Progress::default());
    let show_progress = std::io::stderr().is_terminal();
    let ticker = show_progress.then(|| tokio::spawn(print_progress(progress.clone())));

    let result = copy::copy_image(&request, &progress).await;
    if let Some(ticker) = ticker {
        ticker.abort();
        eprint!("\r\x1b[2K");
    }
    let report = result?;

    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Text => print_summary(&report),
    }
    Ok(())
}

fn build_request(args: &CopyArgs) -> Result<CopyRequest> {
    let source: ImageRef = args.source.parse()?;
    let target: ImageRef = args.target.parse()?;
    let platforms = args
        .platforms
        .iter()
        .map(|p| p.parse::<PlatformFilter>())
        .collect::<Result<Vec<_>, _>>()?;

    let config = load_auth_config(args.authfile.as_deref())?;
    let ca_certificates = read_ca_files(&args.ca_files)?;

    let mut request = CopyRequest::new(source, target);
    request.source_credential = config.credential_for(&request.source).cloned();
    request.target_credential = config.credential_for(&request.target).cloned();
    request.platforms = platforms;
    request.connect = ConnectOptions {
        plain_http: args.plain_http.clone(),
        insecure_tls: args.insecure_tls.clone(),
        ca_certificates,
    };
    request.jobs = args.jobs;
    request.force = args.force;
    args.transfer.apply(&mut request);
    Ok(request)
}

/// Loads the Docker config named on the command line, or the first default that exists.
fn load_auth_config(explicit: Option<&Path>) -> Result<DockerConfig> {
    let path = match explicit {
        Some(path) => Some(path.to_path_buf()),
        None => default_auth_paths().into_iter().find(|p| p.is_file()),
    };
    let Some(path) = path else {
        return Ok(DockerConfig::default());
    };
    let bytes = std::fs::read(&path)
        .with_context(|| format!("failed to read auth file {}", path.display()))?;
    Ok(DockerConfig::parse(&bytes, &path.display().to_string())?)
}

fn default_auth_paths() -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Some(file) = std::env::var_os("REGISTRY_AUTH_FILE") {
        paths.push(PathBuf::from(file));
    }
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        paths.push(Path::new(&dir).join("config.json"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        paths.push(Path::new(&home).join(".docker/config.json"));
    }
    paths
}

async fn print_progress(progress: Arc<Progress>) {
    let mut interval = tokio::time::interval(Duration::from_millis(250));
    loop {
        interval.tick().await;
        let mut stderr = std::io::stderr().lock();
        let _ = write!(
            stderr,
            "\r\x1b[2K{} platforms, blobs {}/{}, manifests {}/{}, {}",
            progress.platforms.load(Ordering::Relaxed),
            progress.blobs_done.load(Ordering::Relaxed),
            progress.blobs_total.load(Ordering::Relaxed),
            progress.manifests_done.load(Ordering::Relaxed),
            progress.manifests_total.load(Ordering::Relaxed),
            human_bytes(progress.bytes.load(Ordering::Relaxed)),
        );
        let _ = stderr.flush();
    }
}

fn print_summary(report: &CopyReport) {
    println!("{} -> {}", report.source, report.target);
    println!("digest   {}", report.target_digest);
    if let Some(reason) = &report.rewrite_reason {
        println!("rewritten: {reason}");
    }
    if report.unchanged {
        println!("unchanged: the target tag already had this digest");
    }
    for platform in &report.platforms {
        println!("  {:<16} {}", platform.platform, platform.digest);
    }
    println!(
        "blobs: {} copied, {} skipped, {} mounted; {} sent",
        report.blobs.copied,
        report.blobs.skipped,
        report.blobs.mounted,
        human_bytes(report.bytes)
    );
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
