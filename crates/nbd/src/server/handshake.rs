//! Server side of the fixed newstyle handshake: greet, answer options, pick the export.
//!
//! With TLS configured the handshake has two phases, as in QEMU's server with
//! `--tls-creds`: before `NBD_OPT_STARTTLS` only STARTTLS and ABORT are served, every
//! other option is answered `NBD_REP_ERR_TLS_REQD` and `NBD_OPT_EXPORT_NAME` (which
//! cannot be answered with an error) closes the connection; after the TLS handshake
//! the usual negotiation runs inside TLS.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::wire::*;
use super::{ExportSource, ServerConfig};
use crate::error::NbdError;

/// What a client negotiated before transmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Negotiated {
    /// Structured replies were agreed.
    pub(crate) structured: bool,
    /// `base:allocation` was selected with `NBD_OPT_SET_META_CONTEXT`.
    pub(crate) base_allocation: bool,
}

/// Transmission flags of the export: read-only, consistent across connections.
pub(crate) const TRANSMISSION_FLAGS: u16 =
    TFLAG_HAS_FLAGS | TFLAG_READ_ONLY | TFLAG_SEND_FLUSH | TFLAG_CAN_MULTI_CONN;

/// What the client agreed in the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Greeted {
    /// The client asked for the 124 zero bytes after `NBD_OPT_EXPORT_NAME` to be left out.
    no_zeroes: bool,
}

/// Whether the stream the options arrive on is already encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// No TLS is configured.
    Plain,
    /// TLS is configured and the client has started it.
    Tls,
}

/// How the options before TLS ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BeforeTls {
    /// `NBD_OPT_STARTTLS` was acknowledged: the TLS handshake comes next.
    StartTls,
    /// The client aborted.
    Abort,
}

/// Sends the server greeting and reads the client's flags.
pub(crate) async fn greet<T>(io: &mut T) -> Result<Greeted, NbdError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut greeting = Vec::with_capacity(18);
    greeting.extend_from_slice(&NBDMAGIC.to_be_bytes());
    greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    send(io, &greeting).await?;

    let client_flags = read_u32(io).await?;
    if client_flags & !(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES) != 0 {
        return Err(NbdError::Protocol(format!(
            "client sent unknown handshake flags {client_flags:#x}"
        )));
    }
    Ok(Greeted {
        no_zeroes: client_flags & CLIENT_FLAG_NO_ZEROES != 0,
    })
}

/// Serves the options a client sends before TLS on a server that requires TLS, until
/// it starts TLS or aborts.
pub(crate) async fn until_starttls<T>(io: &mut T) -> Result<BeforeTls, NbdError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    for _ in 0..MAX_OPTIONS {
        let (option, data) = read_option(io).await?;
        match option {
            OPT_STARTTLS => {
                if !data.is_empty() {
                    // The client cannot start TLS correctly; QEMU drops it too.
                    invalid(io, option, "NBD_OPT_STARTTLS takes no data").await?;
                    return Err(NbdError::Protocol(
                        "NBD_OPT_STARTTLS carried data".to_string(),
                    ));
                }
                send(io, &option_reply(option, REP_ACK, &[])).await?;
                return Ok(BeforeTls::StartTls);
            }
            OPT_ABORT => {
                send(io, &option_reply(option, REP_ACK, &[])).await?;
                return Ok(BeforeTls::Abort);
            }
            OPT_EXPORT_NAME => {
                return Err(NbdError::Protocol(
                    "client asked for an export with NBD_OPT_EXPORT_NAME before starting \
                     the TLS this server requires"
                        .to_string(),
                ));
            }
            _ => {
                let message = "TLS is required: send NBD_OPT_STARTTLS first";
                refuse(io, option, REP_ERR_TLS_REQD, message).await?;
            }
        }
    }
    Err(NbdError::Protocol(format!(
        "client sent more than {MAX_OPTIONS} options"
    )))
}

/// Answers options until the client picks the export; `None` when the client aborted
/// politely or asked nothing more than a list.
pub(crate) async fn negotiate<T, S>(
    io: &mut T,
    source: &S,
    config: &ServerConfig,
    greeted: Greeted,
    transport: Transport,
) -> Result<Option<Negotiated>, NbdError>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: ExportSource,
{
    let no_zeroes = greeted.no_zeroes;
    let mut negotiated = Negotiated {
        structured: false,
        base_allocation: false,
    };

    for _ in 0..MAX_OPTIONS {
        let (option, data) = read_option(io).await?;
        match option {
            OPT_STARTTLS => {
                let (error, message) = match transport {
                    Transport::Tls => (REP_ERR_INVALID, "TLS is already active"),
                    Transport::Plain => (REP_ERR_POLICY, "TLS is not configured on this server"),
                };
                refuse(io, option, error, message).await?;
            }
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data);
                if !export_matches(config, &name) {
                    return Err(NbdError::UnknownExport {
                        export: name.into_owned(),
                        message: "asked with NBD_OPT_EXPORT_NAME".into(),
                    });
                }
                let mut reply = Vec::with_capacity(10 + 124);
                reply.extend_from_slice(&source.size().to_be_bytes());
                reply.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                if !no_zeroes {
                    reply.extend_from_slice(&[0u8; 124]);
                }
                send(io, &reply).await?;
                return Ok(Some(negotiated));
            }
            OPT_ABORT => {
                send(io, &option_reply(option, REP_ACK, &[])).await?;
                return Ok(None);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    invalid(io, option, "NBD_OPT_LIST takes no data").await?;
                    continue;
                }
                let mut server = Vec::new();
                server.extend_from_slice(&(config.export_name.len() as u32).to_be_bytes());
                server.extend_from_slice(config.export_name.as_bytes());
                server.extend_from_slice(config.description.as_bytes());
                send(io, &option_reply(option, REP_SERVER, &server)).await?;
                send(io, &option_reply(option, REP_ACK, &[])).await?;
            }
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    invalid(io, option, "NBD_OPT_STRUCTURED_REPLY takes no data").await?;
                    continue;
                }
                negotiated.structured = true;
                send(io, &option_reply(option, REP_ACK, &[])).await?;
            }
            OPT_INFO | OPT_GO => {
                let mut cursor = OptionData::new(&data);
                let parsed = (|| {
                    let name = cursor.string()?;
                    let count = cursor.u16()?;
                    let mut requests = Vec::with_capacity(usize::from(count));
                    for _ in 0..count {
                        requests.push(cursor.u16()?);
                    }
                    cursor.is_empty().then_some((name, requests))
                })();
                let Some((name, requests)) = parsed else {
                    invalid(io, option, "malformed NBD_OPT_GO/NBD_OPT_INFO data").await?;
                    continue;
                };
                if !export_matches(config, &name) {
                    let message = format!("no export named {name:?}");
                    refuse(io, option, REP_ERR_UNKNOWN, &message).await?;
                    continue;
                }
                send_infos(io, option, &requests, source, config).await?;
                send(io, &option_reply(option, REP_ACK, &[])).await?;
                if option == OPT_GO {
                    return Ok(Some(negotiated));
                }
            }
            OPT_SET_META_CONTEXT | OPT_LIST_META_CONTEXT => {
                let mut cursor = OptionData::new(&data);
                let parsed = (|| {
                    let name = cursor.string()?;
                    let count = cursor.u32()?;
                    // Each query takes at least 4 bytes, so the count is bounded by the data.
                    if count as usize > data.len() / 4 {
                        return None;
                    }
                    let mut queries = Vec::with_capacity(count as usize);
                    for _ in 0..count {
                        queries.push(cursor.string()?);
                    }
                    cursor.is_empty().then_some((name, queries))
                })();
                let Some((name, queries)) = parsed else {
                    invalid(io, option, "malformed meta context data").await?;
                    continue;
                };
                if option == OPT_SET_META_CONTEXT && !negotiated.structured {
                    invalid(
                        io,
                        option,
                        "NBD_OPT_SET_META_CONTEXT needs structured replies first",
                    )
                    .await?;
                    continue;
                }
                if !export_matches(config, &name) {
                    let message = format!("no export named {name:?}");
                    refuse(io, option, REP_ERR_UNKNOWN, &message).await?;
                    continue;
                }
                let selected = if option == OPT_SET_META_CONTEXT {
                    queries.iter().any(|query| query == CONTEXT_BASE_ALLOCATION)
                } else {
                    queries.is_empty()
                        || queries
                            .iter()
                            .any(|query| query == "base:" || query == CONTEXT_BASE_ALLOCATION)
                };
                if option == OPT_SET_META_CONTEXT {
                    negotiated.base_allocation = selected;
                }
                if selected {
                    let mut context = Vec::new();
                    context.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
                    context.extend_from_slice(CONTEXT_BASE_ALLOCATION.as_bytes());
                    send(io, &option_reply(option, REP_META_CONTEXT, &context)).await?;
                }
                send(io, &option_reply(option, REP_ACK, &[])).await?;
            }
            _ => {
                let message = format!("option {option} is not supported");
                refuse(io, option, REP_ERR_UNSUP, &message).await?;
            }
        }
    }
    Err(NbdError::Protocol(format!(
        "client sent more than {MAX_OPTIONS} options"
    )))
}

use crate::CONTEXT_BASE_ALLOCATION;

fn export_matches(config: &ServerConfig, name: &str) -> bool {
    name.is_empty() || name == config.export_name
}

async fn send_infos<W: AsyncWrite + Unpin, S: ExportSource>(
    writer: &mut W,
    option: u32,
    requests: &[u16],
    source: &S,
    config: &ServerConfig,
) -> Result<(), NbdError> {
    let mut export = Vec::with_capacity(12);
    export.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    export.extend_from_slice(&source.size().to_be_bytes());
    export.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
    send(writer, &option_reply(option, REP_INFO, &export)).await?;

    if requests.contains(&INFO_NAME) {
        let mut name = INFO_NAME.to_be_bytes().to_vec();
        name.extend_from_slice(config.export_name.as_bytes());
        send(writer, &option_reply(option, REP_INFO, &name)).await?;
    }
    if requests.contains(&INFO_DESCRIPTION) && !config.description.is_empty() {
        let mut description = INFO_DESCRIPTION.to_be_bytes().to_vec();
        let text = config.description.as_bytes();
        description.extend_from_slice(&text[..text.len().min(MAX_STRING)]);
        send(writer, &option_reply(option, REP_INFO, &description)).await?;
    }
    let preferred = config
        .preferred_block_size
        .clamp(512, MAX_REQUEST)
        .next_power_of_two()
        .min(MAX_REQUEST);
    let mut block_size = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
    block_size.extend_from_slice(&1u32.to_be_bytes());
    block_size.extend_from_slice(&preferred.to_be_bytes());
    block_size.extend_from_slice(&MAX_REQUEST.to_be_bytes());
    send(writer, &option_reply(option, REP_INFO, &block_size)).await
}

async fn invalid<W: AsyncWrite + Unpin>(
    writer: &mut W,
    option: u32,
    message: &str,
) -> Result<(), NbdError> {
    refuse(writer, option, REP_ERR_INVALID, message).await
}

/// Answers `option` with the error reply `error` and its `message`.
async fn refuse<W: AsyncWrite + Unpin>(
    writer: &mut W,
    option: u32,
    error: u32,
    message: &str,
) -> Result<(), NbdError> {
    send(writer, &option_reply(option, error, message.as_bytes())).await
}

async fn send<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> Result<(), NbdError> {
    writer.write_all(bytes).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads one option: its number and its data, bounded by [`MAX_OPTION_DATA`].
async fn read_option<R: AsyncRead + Unpin>(reader: &mut R) -> Result<(u32, Vec<u8>), NbdError> {
    let magic = read_u64(reader).await?;
    if magic != IHAVEOPT {
        return Err(NbdError::Protocol(format!("bad option magic {magic:#x}")));
    }
    let option = read_u32(reader).await?;
    let length = read_u32(reader).await?;
    if length > MAX_OPTION_DATA {
        return Err(NbdError::Protocol(format!(
            "option {option} carries {length} bytes, more than {MAX_OPTION_DATA}"
        )));
    }
    let mut data = vec![0u8; length as usize];
    reader.read_exact(&mut data).await?;
    Ok((option, data))
}

async fn read_u32<R: AsyncRead + Unpin>(reader: &mut R) -> Result<u32, NbdError> {
    let mut bytes = [0u8; 4];
    reader.read_exact(&mut bytes).await?;
    Ok(u32::from_be_bytes(bytes))
}

async fn read_u64<R: AsyncRead + Unpin>(reader: &mut R) -> Result<u64, NbdError> {
    let mut bytes = [0u8; 8];
    reader.read_exact(&mut bytes).await?;
    Ok(u64::from_be_bytes(bytes))
}
