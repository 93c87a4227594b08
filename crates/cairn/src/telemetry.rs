//! Logs on stderr and, when a collector is configured, spans exported by OTLP.
//!
//! The two have separate filters: `-v`/`CAIRN_LOG` choose what is printed, while the
//! exporter takes every span (and event) of cairn's own crates at info and above, so
//! that a quiet terminal still exports whole traces. Without a collector no
//! OpenTelemetry layer is installed and disabled spans cost nothing.

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The variables that turn export on by themselves, as the OpenTelemetry
/// specification defines them.
const ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
];

/// What must outlive the command: the exporter, flushed by [`Telemetry::shutdown`].
#[derive(Debug)]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered. Call it once the command has finished,
    /// outside the async runtime.
    pub fn shutdown(self) {
        if let Some(tracer) = self.tracer
            && let Err(error) = tracer.shutdown()
        {
            eprintln!("warning: not every span reached the OTLP collector: {error}");
        }
    }
}

/// Installs the global subscriber. Fails only on a bad exporter configuration.
pub fn init(verbose: u8, otlp_endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "error",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_env("CAIRN_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let tracer = if exporting(otlp_endpoint) {
        Some(tracer_provider(otlp_endpoint)?)
    } else {
        None
    };
    let spans = tracer.as_ref().map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer.tracer("cairn"))
            .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
                metadata.target().starts_with("cairn") && *metadata.level() <= tracing::Level::INFO
            }))
    });
    tracing_subscriber::registry().with(logs).with(spans).init();
    Ok(Telemetry { tracer })
}

fn exporting(otlp_endpoint: Option<&str>) -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|value| !value.trim().is_empty());
    let disabled =
        std::env::var("OTEL_SDK_DISABLED").is_ok_and(|value| value.eq_ignore_ascii_case("true"));
    !disabled && (otlp_endpoint.is_some() || ENDPOINT_VARIABLES.iter().any(|name| set(name)))
}

fn tracer_provider(otlp_endpoint: Option<&str>) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig as _};
    let mut exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary);
    if let Some(base) = otlp_endpoint {
        exporter = exporter.with_endpoint(format!("{base}/v1/traces"));
    }
    let exporter = exporter
        .build()
        .context("configuring the OTLP span exporter")?;
    // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are read here; cairn names itself
    // when they do not.
    let mut resource = opentelemetry_sdk::Resource::builder().with_attribute(
        opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
    );
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("cairn");
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_id_generator(cairn_observe::otel::CorrelationIds::default())
        .with_resource(resource.build())
        .build())
}
