//! Fixed newstyle handshake: greeting, structured replies, meta contexts, `NBD_OPT_GO`.
//!
//! Each step runs under the connect timeout, every option reply is bounded
//! to [`wire::MAX_OPTION_REPLY`] bytes and every option to
//! [`MAX_REPLIES_PER_OPTION`] replies, so a hostile server cannot make the
//! handshake hang or allocate without bound.

use std::time::Duration;

use tracing::debug;

use crate::client::ConnectOptions;
use crate::error::NbdError;
use crate::transport::{Transport, with_timeout};
use crate::wire::{self, BlockSize, Info, OptionReplyHeader};

/// How many replies one option may produce before the server is deemed hostile.
const MAX_REPLIES_PER_OPTION: usize = 1024;

/// A metadata context the server granted, with the id it uses in block status replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MetaContext {
    pub(crate) name: String,
    pub(crate) id: u32,
}

/// What the handshake established about the export.
#[derive(Debug, Clone)]
pub(crate) struct Negotiated {
    pub(crate) size: u64,
    pub(crate) transmission_flags: u16,
    pub(crate) block_size: BlockSize,
    pub(crate) structured_replies: bool,
    pub(crate) meta_contexts: Vec<MetaContext>,
}

/// Runs the whole handshake on a freshly opened transport.
pub(crate) async fn negotiate(
    transport: &mut Transport,
    options: &ConnectOptions,
) -> Result<Negotiated, NbdError> {
    wire::check_string("export name", &options.export)?;
    for context in &options.meta_contexts {
        wire::check_string("meta context name", context)?;
    }
    let timeout = options.timeout;
    with_timeout("handshake greeting", timeout, greet(transport)).await?;
    let result = negotiate_options(transport, options, timeout).await;
    if let Err(error) = &result
        && !error.breaks_connection()
    {
        // The server still waits for options: say goodbye politely.
        let abort = async {
            transport
                .write_all(&wire::encode_option(wire::OPT_ABORT, &[]))
                .await?;
            transport.flush().await
        };
        let _ = with_timeout("option abort", timeout, abort).await;
    }
    result
}

async fn greet(transport: &mut Transport) -> Result<(), NbdError> {
    let magic = u64::from_be_bytes(transport.read_array().await?);
    if magic != wire::NBDMAGIC {
        return Err(NbdError::Protocol(format!(
            "server greeting starts with {magic:#x} instead of NBDMAGIC"
        )));
    }
    let style = u64::from_be_bytes(transport.read_array().await?);
    if style == wire::OLDSTYLE_MAGIC {
        return Err(NbdError::Unsupported("the oldstyle handshake".into()));
    }
    if style != wire::IHAVEOPT {
        return Err(NbdError::Protocol(format!(
            "server greeting has {style:#x} instead of IHAVEOPT"
        )));
    }
    let handshake_flags = u16::from_be_bytes(transport.read_array().await?);
    if handshake_flags & wire::FLAG_FIXED_NEWSTYLE == 0 {
        return Err(NbdError::Unsupported(
            "the fixed newstyle handshake (server sent only newstyle)".into(),
        ));
    }
    let client_flags =
        u32::from(wire::FLAG_FIXED_NEWSTYLE | (handshake_flags & wire::FLAG_NO_ZEROES));
    transport.write_all(&client_flags.to_be_bytes()).await?;
    transport.flush().await
}

async fn negotiate_options(
    transport: &mut Transport,
    options: &ConnectOptions,
    timeout: Duration,
) -> Result<Negotiated, NbdError> {
    let structured_replies = with_timeout(
        "NBD_OPT_STRUCTURED_REPLY",
        timeout,
        structured_reply(transport),
    )
    .await?;
    let meta_contexts = if structured_replies && !options.meta_contexts.is_empty() {
        with_timeout(
            "NBD_OPT_SET_META_CONTEXT",
            timeout,
            set_meta_context(transport, options),
        )
        .await?
    } else {
        Vec::new()
    };
    let (size, transmission_flags, block_size) =
        with_timeout("NBD_OPT_GO", timeout, go(transport, &options.export)).await?;
    debug!(
        export = %options.export,
        size,
        transmission_flags,
        structured_replies,
        contexts = meta_contexts.len(),
        "nbd handshake complete"
    );
    Ok(Negotiated {
        size,
        transmission_flags,
        block_size,
        structured_replies,
        meta_contexts,
    })
}

async fn send_option(transport: &mut Transport, option: u32, data: &[u8]) -> Result<(), NbdError> {
    transport
        .write_all(&wire::encode_option(option, data))
        .await?;
    transport.flush().await
}

/// Reads one bounded option reply to `option`.
async fn read_option_reply(
    transport: &mut Transport,
    option: u32,
) -> Result<(OptionReplyHeader, Vec<u8>), NbdError> {
    let header = OptionReplyHeader::decode(&transport.read_array().await?, option)?;
    let payload = transport.read_vec(header.length).await?;
    Ok((header, payload))
}

fn message_of(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

fn unexpected_reply(option: &str, reply_type: u32) -> NbdError {
    NbdError::Protocol(format!("unexpected reply type {reply_type:#x} to {option}"))
}

async fn structured_reply(transport: &mut Transport) -> Result<bool, NbdError> {
    send_option(transport, wire::OPT_STRUCTURED_REPLY, &[]).await?;
    let (header, payload) = read_option_reply(transport, wire::OPT_STRUCTURED_REPLY).await?;
    match header.reply_type {
        wire::REP_ACK if payload.is_empty() => Ok(true),
        wire::REP_ACK => Err(NbdError::Protocol(
            "NBD_OPT_STRUCTURED_REPLY acknowledged with a payload".into(),
        )),
        code if code & wire::REP_ERR_BIT != 0 => {
            debug!(
                code,
                message = %message_of(&payload),
                "server refused structured replies, using simple replies"
            );
            Ok(false)
        }
        other => Err(unexpected_reply("NBD_OPT_STRUCTURED_REPLY", other)),
    }
}

async fn set_meta_context(
    transport: &mut Transport,
    options: &ConnectOptions,
) -> Result<Vec<MetaContext>, NbdError> {
    let data = wire::encode_set_meta_context(&options.export, &options.meta_contexts);
    send_option(transport, wire::OPT_SET_META_CONTEXT, &data).await?;
    let mut granted: Vec<MetaContext> = Vec::new();
    for _ in 0..MAX_REPLIES_PER_OPTION {
        let (header, payload) = read_option_reply(transport, wire::OPT_SET_META_CONTEXT).await?;
        match header.reply_type {
            wire::REP_META_CONTEXT => {
                let (id, name) = wire::decode_meta_context(&payload)?;
                if granted.iter().any(|context| context.id == id) {
                    return Err(NbdError::Protocol(format!(
                        "meta context id {id} granted twice"
                    )));
                }
                debug!(id, name = %name, "nbd meta context granted");
                granted.push(MetaContext { name, id });
            }
            wire::REP_ACK if payload.is_empty() => return Ok(granted),
            wire::REP_ACK => {
                return Err(NbdError::Protocol(
                    "NBD_OPT_SET_META_CONTEXT acknowledged with a payload".into(),
                ));
            }
            wire::REP_ERR_UNKNOWN => {
                return Err(NbdError::UnknownExport {
                    export: options.export.clone(),
                    message: message_of(&payload),
                });
            }
            wire::REP_ERR_UNSUP => {
                // Callers check has_meta_context(): no contexts is a valid outcome.
                debug!(message = %message_of(&payload), "server does not support meta contexts");
                return Ok(Vec::new());
            }
            code if code & wire::REP_ERR_BIT != 0 => {
                return Err(NbdError::OptionRejected {
                    option: "NBD_OPT_SET_META_CONTEXT",
                    code,
                    message: message_of(&payload),
                });
            }
            other => return Err(unexpected_reply("NBD_OPT_SET_META_CONTEXT", other)),
        }
    }
    Err(NbdError::Protocol(
        "too many replies to NBD_OPT_SET_META_CONTEXT".into(),
    ))
}

async fn go(transport: &mut Transport, export: &str) -> Result<(u64, u16, BlockSize), NbdError> {
    let data = wire::encode_go(export, &[wire::INFO_BLOCK_SIZE]);
    send_option(transport, wire::OPT_GO, &data).await?;
    let mut export_info = None;
    let mut block_size = BlockSize::DEFAULT;
    for _ in 0..MAX_REPLIES_PER_OPTION {
        let (header, payload) = read_option_reply(transport, wire::OPT_GO).await?;
        match header.reply_type {
            wire::REP_INFO => match wire::decode_info(&payload)? {
                Info::Export { size, flags } => export_info = Some((size, flags)),
                Info::BlockSize(constraints) => block_size = constraints,
                Info::Other(info_type) => debug!(info_type, "ignoring nbd info"),
            },
            wire::REP_ACK if payload.is_empty() => {
                let (size, flags) = export_info.ok_or_else(|| {
                    NbdError::Protocol("NBD_OPT_GO succeeded without NBD_INFO_EXPORT".into())
                })?;
                return Ok((size, flags, block_size));
            }
            wire::REP_ACK => {
                return Err(NbdError::Protocol(
                    "NBD_OPT_GO acknowledged with a payload".into(),
                ));
            }
            wire::REP_ERR_UNKNOWN => {
                return Err(NbdError::UnknownExport {
                    export: export.to_string(),
                    message: message_of(&payload),
                });
            }
            wire::REP_ERR_UNSUP => {
                return Err(NbdError::Unsupported(format!(
                    "NBD_OPT_GO: {}",
                    message_of(&payload)
                )));
            }
            code if code & wire::REP_ERR_BIT != 0 => {
                return Err(NbdError::OptionRejected {
                    option: "NBD_OPT_GO",
                    code,
                    message: message_of(&payload),
                });
            }
            other => return Err(unexpected_reply("NBD_OPT_GO", other)),
        }
    }
    Err(NbdError::Protocol("too many replies to NBD_OPT_GO".into()))
}
