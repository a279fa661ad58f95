//! How the SQLite journal stores an event's JSON: compressed with zstd against a fixed
//! dictionary of the keys and fixed words that every event of a kind repeats.
//!
//! Why: a stored event was its webhook about twice over (the source's fields beside
//! `raw`, the body as received): the 605-byte sample dbt webhook became a 1,242-byte body,
//! three rows to a 4 KiB page, and the journal took 2.76 bytes per webhook byte.
//! Compressed, the repeats cost a few bytes each, and with the dictionary even the first
//! occurrence of a key does. The dictionary holds only key names and fixed vocabulary
//! (sources, types, run statuses), never a sample's values, so what it saves comes from
//! the structure every real webhook of a kind shares.
//!
//! The stored form is a BLOB: one format byte, then a zstd frame of the event's own fields
//! and `raw`; the id, source, type, time received and chain depth are columns of the row
//! and are not stored twice (they are the part of an event that does not compress).
//! Bodies written before this format are TEXT (the whole event as JSON) and are still
//! read as such. The dictionary is part of
//! the file format: it must never change. A better one gets a new format byte and this one
//! stays, to read older rows.

use std::cell::RefCell;
use std::sync::LazyLock;

use rusqlite::types::ValueRef;
use serde::Serialize;
use serde_json::{Map, Value};
use zstd::bulk::{Compressor, Decompressor};
use zstd::dict::{DecoderDictionary, EncoderDictionary};

use super::super::JournalError;
use crate::event::Event;

/// Format byte: zstd with [`DICTIONARY_V1`].
const ZSTD_V1: u8 = 1;

/// zstd's default level: a few microseconds per event on the intake path (off the commit
/// thread), and 7 % smaller than level 1 on the sample dbt event (362 bytes, against 391).
const LEVEL: i32 = 3;

/// The largest body a stored frame may claim to hold: more than any webhook (1 MiB) plus
/// the Mode results freshet adds to it. A frame claiming more is corrupt.
const MAX_BODY_BYTES: u64 = 64 << 20;

/// Raw-content zstd dictionary: an event of each kind as freshet serializes it (fields in
/// the order serde writes them), with the values left empty. The commonest kind (dbt)
/// comes last, nearest the data, where matches are cheapest.
const DICTIONARY_V1: &str = concat!(
    r#"{"id":"freshet:","source":"freshet","type":"freshet.action.failed","received_at":"","chain_depth":1,"#,
    r#""action":"slack_post","action_id":,"args":{"channel":"","text":"","thread_ts":""},"cause_event_id":"","#,
    r#""error":"","rule":"","raw":null}"#,
    r#"{"id":"tableau:","source":"tableau","type":"tableau.refresh.completed","received_at":"","chain_depth":1,"#,
    r#""cause_event_id":"","completed_at":"","datasource":"","finish_code":0,"job_id":"","notes":"","#,
    r#""project":"","rule":"","started_at":"","status":"success","workbook":"","raw":null}"#,
    r#"{"id":"mode:","source":"mode","type":"mode.report.run.completed","received_at":"","chain_depth":0,"#,
    r#""event":"report_run_completed","report_name":"","report_token":"","report_url":"","#,
    r#""result_errors":{},"results":{"":[{"":""}]},"run_state":"succeeded","run_token":"","run_url":"","#,
    r#""verified":true,"workspace":"","raw":{"event":"report_run_completed","report_run_url":"https://app.mode.com/api/","#,
    r#""report_url":"https://app.mode.com/api/","resource_path":"/api//reports//runs/","#,
    r#""resource_url":"https://app.mode.com/api//reports//runs/"}}"#,
    r#"{"id":"dbt:","source":"dbt","type":"dbt.job.run.started","received_at":"","chain_depth":0,"#,
    r#""run_status":"Running","run_status_code":3,"runStatus":"Running","runStatusCode":3,"#,
    r#""run_status":"Error","run_status_code":20,"runStatus":"Error","runStatusCode":20,"#,
    r#""eventType":"job.run.errored","type":"dbt.job.run.errored","#,
    r#"{"id":"dbt:","source":"dbt","type":"dbt.job.run.completed","received_at":"","chain_depth":0,"#,
    r#""account_id":,"dbt_version":"","environment_id":,"environment_name":"Production","#,
    r#""errored_at":null,"finished_at":"","job_id":,"job_name":"","project_id":,"project_name":"","#,
    r#""run_id":,"run_reason":"","run_status":"Success","run_status_code":10,"#,
    r#""run_status_message":"None","started_at":"","timestamp":"","webhook_id":"","webhook_name":"","#,
    r#""raw":{"accountId":,"data":{"dbtVersion":"","environmentId":"","environmentName":"Production","#,
    r#""jobId":"","jobName":"","projectId":"","projectName":"","runErroredAt":"","runFinishedAt":"","#,
    r#""runId":"","runReason":"","runStartedAt":"","runStatus":"Success","runStatusCode":10,"#,
    r#""runStatusMessage":"None"},"eventId":"","eventType":"job.run.completed","timestamp":"","#,
    r#""webhookName":"","webhooksID":""}}"#,
);

static ENCODER_DICTIONARY: LazyLock<EncoderDictionary<'static>> =
    LazyLock::new(|| EncoderDictionary::copy(DICTIONARY_V1.as_bytes(), LEVEL));
static DECODER_DICTIONARY: LazyLock<DecoderDictionary<'static>> =
    LazyLock::new(|| DecoderDictionary::copy(DICTIONARY_V1.as_bytes()));

thread_local! {
    // A zstd context is a few hundred KiB to set up; intake threads keep one each.
    static COMPRESSOR: RefCell<Option<Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<Decompressor<'static>>> = const { RefCell::new(None) };
}

/// What the body holds: everything of the event but its columns.
#[derive(Serialize)]
struct StoredBody<'a> {
    #[serde(flatten)]
    fields: &'a Map<String, Value>,
    raw: &'a Value,
}

/// The columns of an event's row that are not in its body.
pub(super) struct Header {
    pub id: String,
    pub source: String,
    pub kind: String,
    pub received_at: String,
    pub chain_depth: u32,
}

/// An event's body as the `body` column stores it.
pub(super) fn encode_event(event: &Event) -> Result<Vec<u8>, JournalError> {
    let json = serde_json::to_string(&StoredBody {
        fields: &event.fields,
        raw: &event.raw,
    })
    .map_err(|e| JournalError::Refused(e.to_string()))?;
    encode(&json)
}

/// The event a row holds: its columns, and its body in either form.
pub(super) fn decode_event(header: Header, stored: ValueRef<'_>) -> Result<Event, JournalError> {
    let parse =
        |json: &str| serde_json::from_str::<Value>(json).map_err(|e| corrupt(&e.to_string()));
    let event = match stored {
        // Written before compression: the whole event, header included.
        ValueRef::Text(_) => parse(&decode(stored)?)?,
        _ => {
            let Value::Object(mut body) = parse(&decode(stored)?)? else {
                return Err(corrupt("not a JSON object"));
            };
            body.insert("id".into(), header.id.into());
            body.insert("source".into(), header.source.into());
            body.insert("type".into(), header.kind.into());
            body.insert("received_at".into(), header.received_at.into());
            body.insert("chain_depth".into(), header.chain_depth.into());
            Value::Object(body)
        }
    };
    Event::from_json(event).map_err(|e| corrupt(&e.to_string()))
}

/// JSON as the `body` column stores it.
fn encode(json: &str) -> Result<Vec<u8>, JournalError> {
    COMPRESSOR
        .with(|cell| {
            let mut cell = cell.borrow_mut();
            let compressor = match cell.as_mut() {
                Some(compressor) => compressor,
                None => cell.insert(Compressor::with_prepared_dictionary(&ENCODER_DICTIONARY)?),
            };
            let frame = compressor.compress(json.as_bytes())?;
            let mut stored = Vec::with_capacity(1 + frame.len());
            stored.push(ZSTD_V1);
            stored.extend_from_slice(&frame);
            Ok(stored)
        })
        .map_err(|error: std::io::Error| {
            JournalError::Refused(format!("cannot compress the event: {error}"))
        })
}

/// The JSON a `body` column holds: TEXT as written before compression, or a BLOB in a
/// known format.
fn decode(stored: ValueRef<'_>) -> Result<String, JournalError> {
    match stored {
        ValueRef::Text(text) => String::from_utf8(text.to_vec()).map_err(|_| corrupt("not UTF-8")),
        ValueRef::Blob([ZSTD_V1, frame @ ..]) => {
            let size = zstd::zstd_safe::get_frame_content_size(frame)
                .ok()
                .flatten()
                .filter(|size| *size <= MAX_BODY_BYTES)
                .ok_or_else(|| corrupt("a compressed body with no valid size"))?;
            let json = DECOMPRESSOR.with(|cell| {
                let mut cell = cell.borrow_mut();
                let decompressor = match cell.as_mut() {
                    Some(decompressor) => decompressor,
                    None => {
                        cell.insert(Decompressor::with_prepared_dictionary(&DECODER_DICTIONARY)?)
                    }
                };
                decompressor.decompress(frame, size as usize)
            });
            let json = json.map_err(|error| corrupt(&format!("cannot decompress: {error}")))?;
            String::from_utf8(json).map_err(|_| corrupt("not UTF-8"))
        }
        ValueRef::Blob(_) => Err(corrupt("a body in an unknown format")),
        _ => Err(corrupt("a body that is neither text nor a blob")),
    }
}

fn corrupt(what: &str) -> JournalError {
    JournalError::Corrupt(format!("stored event body: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        let body = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/samples/dbt-job-run-completed.json"
        ))
        .unwrap();
        let mut event =
            crate::ingest::dbt_cloud::parse(&body, "2026-11-30T20:00:00.000Z".into()).unwrap();
        event.chain_depth = 2;
        event
    }

    fn sample_event() -> String {
        serde_json::to_string(&sample()).unwrap()
    }

    fn header(event: &Event) -> Header {
        Header {
            id: event.id.clone(),
            source: event.source.as_str().into(),
            kind: event.kind.clone(),
            received_at: event.received_at.clone(),
            chain_depth: event.chain_depth,
        }
    }

    #[test]
    fn events_come_back_whole_from_their_columns_and_body() {
        let event = sample();
        let stored = encode_event(&event).unwrap();
        let json = decode(ValueRef::Blob(&stored)).unwrap();
        assert!(!json.contains(&event.id), "the id is a column: {json}");
        assert_eq!(
            decode_event(header(&event), ValueRef::Blob(&stored)).unwrap(),
            event
        );
        // A row written before compression holds the whole event as text.
        let legacy = serde_json::to_string(&event).unwrap();
        assert_eq!(
            decode_event(header(&event), ValueRef::Text(legacy.as_bytes())).unwrap(),
            event
        );
    }

    #[test]
    fn bodies_come_back_as_written_whatever_the_format() {
        let json = sample_event();
        let stored = encode(&json).unwrap();
        assert_eq!(stored[0], ZSTD_V1);
        assert!(
            stored.len() * 3 < json.len(),
            "{} of {} bytes",
            stored.len(),
            json.len()
        );
        assert_eq!(decode(ValueRef::Blob(&stored)).unwrap(), json);
        // Rows written before compression are plain JSON text.
        assert_eq!(decode(ValueRef::Text(json.as_bytes())).unwrap(), json);
        // A body that does not match the dictionary still round-trips.
        let odd = r#"{"id":"x","noise":"qwertyuiopasdfghjkl\u00e9\u4e2d"}"#;
        assert_eq!(decode(ValueRef::Blob(&encode(odd).unwrap())).unwrap(), odd);
    }

    #[test]
    fn damaged_bodies_are_reported_not_guessed() {
        let stored = encode(&sample_event()).unwrap();
        for damaged in [
            &stored[..stored.len() / 2],
            &[9u8, 1, 2, 3][..],
            &[ZSTD_V1][..],
        ] {
            let error = decode(ValueRef::Blob(damaged)).unwrap_err();
            assert!(matches!(error, JournalError::Corrupt(_)), "{error}");
        }
        assert!(decode(ValueRef::Integer(1)).is_err());
    }
}
