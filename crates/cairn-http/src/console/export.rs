//! Lists as files to download, CSV or JSON (`?format=csv` or `?format=json` on a
//! list's own address): the same rows the page would read, through the same policy,
//! up to [`MOST_ROWS`].

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The most rows one export holds.
pub(crate) const MOST_ROWS: u32 = 10_000;

/// How a list is downloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Csv,
    Json,
}

impl Format {
    /// The `format` a list's address asked for: none (the page), or one of the two.
    pub(crate) fn asked(text: Option<&str>) -> Result<Option<Format>, String> {
        match text.map(str::trim) {
            None | Some("") => Ok(None),
            Some("csv") => Ok(Some(Format::Csv)),
            Some("json") => Ok(Some(Format::Json)),
            Some(other) => Err(format!("format: {other:?} is neither csv nor json")),
        }
    }
}

/// `rows` under `header`, as a file named after `what` and the time.
pub(crate) fn file(
    format: Format,
    what: &str,
    header: &[&str],
    rows: Vec<Vec<String>>,
) -> Response {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let (body, content_type, extension) = match format {
        Format::Csv => {
            let mut writer = csv::Writer::from_writer(Vec::new());
            let written = std::iter::once(header.iter().map(|h| (*h).to_owned()).collect())
                .chain(rows)
                .try_for_each(|row: Vec<String>| writer.write_record(&row));
            match written.and_then(|()| writer.flush().map_err(csv::Error::from)) {
                Ok(()) => (
                    writer.into_inner().unwrap_or_default(),
                    "text/csv; charset=utf-8",
                    "csv",
                ),
                Err(error) => {
                    tracing::error!(%error, "cannot write a CSV export");
                    return (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the export could not be written",
                    )
                        .into_response();
                }
            }
        }
        Format::Json => {
            let objects: Vec<serde_json::Map<String, serde_json::Value>> = rows
                .into_iter()
                .map(|row| {
                    header
                        .iter()
                        .map(|h| (*h).to_owned())
                        .zip(row.into_iter().map(serde_json::Value::String))
                        .collect()
                })
                .collect();
            (
                serde_json::to_vec_pretty(&objects).unwrap_or_default(),
                "application/json",
                "json",
            )
        }
    };
    let disposition = format!("attachment; filename=\"cairn-{what}-{stamp}.{extension}\"");
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}
