//! Reply codes and protocol errors.
//!
//! Whether an error closes the channel or the whole connection is data from the spec (the
//! `is_hard` table below), not a decision taken at each call site.

use std::fmt;

/// AMQP 0-9-1 reply codes (spec section 1.9 and RabbitMQ's usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ReplyCode {
    ReplySuccess = 200,
    ContentTooLarge = 311,
    NoRoute = 312,
    NoConsumers = 313,
    ConnectionForced = 320,
    InvalidPath = 402,
    AccessRefused = 403,
    NotFound = 404,
    ResourceLocked = 405,
    PreconditionFailed = 406,
    FrameError = 501,
    SyntaxError = 502,
    CommandInvalid = 503,
    ChannelError = 504,
    UnexpectedFrame = 505,
    ResourceError = 506,
    NotAllowed = 530,
    NotImplemented = 540,
    InternalError = 541,
}

impl ReplyCode {
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The reply code numbered `code`, if it is one.
    pub fn from_code(code: u16) -> Option<ReplyCode> {
        use ReplyCode::*;
        [
            ReplySuccess,
            ContentTooLarge,
            NoRoute,
            NoConsumers,
            ConnectionForced,
            InvalidPath,
            AccessRefused,
            NotFound,
            ResourceLocked,
            PreconditionFailed,
            FrameError,
            SyntaxError,
            CommandInvalid,
            ChannelError,
            UnexpectedFrame,
            ResourceError,
            NotAllowed,
            NotImplemented,
            InternalError,
        ]
        .into_iter()
        .find(|c| c.code() == code)
    }

    /// The spec's name, as RabbitMQ puts it at the start of a reply text.
    pub fn name(self) -> &'static str {
        match self {
            ReplyCode::ReplySuccess => "OK",
            ReplyCode::ContentTooLarge => "CONTENT_TOO_LARGE",
            ReplyCode::NoRoute => "NO_ROUTE",
            ReplyCode::NoConsumers => "NO_CONSUMERS",
            ReplyCode::ConnectionForced => "CONNECTION_FORCED",
            ReplyCode::InvalidPath => "INVALID_PATH",
            ReplyCode::AccessRefused => "ACCESS_REFUSED",
            ReplyCode::NotFound => "NOT_FOUND",
            ReplyCode::ResourceLocked => "RESOURCE_LOCKED",
            ReplyCode::PreconditionFailed => "PRECONDITION_FAILED",
            ReplyCode::FrameError => "FRAME_ERROR",
            ReplyCode::SyntaxError => "SYNTAX_ERROR",
            ReplyCode::CommandInvalid => "COMMAND_INVALID",
            ReplyCode::ChannelError => "CHANNEL_ERROR",
            ReplyCode::UnexpectedFrame => "UNEXPECTED_FRAME",
            ReplyCode::ResourceError => "RESOURCE_ERROR",
            ReplyCode::NotAllowed => "NOT_ALLOWED",
            ReplyCode::NotImplemented => "NOT_IMPLEMENTED",
            ReplyCode::InternalError => "INTERNAL_ERROR",
        }
    }

    /// Hard errors close the connection; soft ones close only the channel (spec 1.9).
    pub fn is_hard(self) -> bool {
        matches!(
            self,
            ReplyCode::ConnectionForced
                | ReplyCode::InvalidPath
                | ReplyCode::FrameError
                | ReplyCode::SyntaxError
                | ReplyCode::CommandInvalid
                | ReplyCode::ChannelError
                | ReplyCode::UnexpectedFrame
                | ReplyCode::ResourceError
                | ReplyCode::NotAllowed
                | ReplyCode::NotImplemented
                | ReplyCode::InternalError
        )
    }
}

/// An error to report to the peer: the code, a text saying what was wrong, and the method that
/// caused it (class 0 / method 0 when no method is to blame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: ReplyCode,
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

impl ProtocolError {
    pub fn new(code: ReplyCode, detail: impl fmt::Display) -> Self {
        ProtocolError { code, text: format!("{} - {}", code.name(), detail), class_id: 0, method_id: 0 }
    }

    /// Attributes the error to the method `(class_id, method_id)`.
    pub fn on(mut self, ids: (u16, u16)) -> Self {
        self.class_id = ids.0;
        self.method_id = ids.1;
        self
    }

    pub fn frame(detail: impl fmt::Display) -> Self {
        Self::new(ReplyCode::FrameError, detail)
    }

    pub fn syntax(detail: impl fmt::Display) -> Self {
        Self::new(ReplyCode::SyntaxError, detail)
    }

    /// Reply texts are short strings: at most 255 bytes, cut on a character boundary.
    pub fn reply_text(&self) -> &str {
        truncate_utf8(&self.text, 255)
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.text, self.code.code())
    }
}

impl std::error::Error for ProtocolError {}

/// Cuts `s` to at most `max` bytes without splitting a character.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_and_soft_follow_the_spec() {
        assert!(!ReplyCode::PreconditionFailed.is_hard());
        assert!(!ReplyCode::NotFound.is_hard());
        assert!(!ReplyCode::AccessRefused.is_hard());
        assert!(!ReplyCode::ResourceLocked.is_hard());
        assert!(ReplyCode::FrameError.is_hard());
        assert!(ReplyCode::ChannelError.is_hard());
        assert!(ReplyCode::NotAllowed.is_hard());
    }

    #[test]
    fn reply_text_is_cut_to_a_short_string() {
        let e = ProtocolError::new(ReplyCode::NotFound, "é".repeat(300));
        assert!(e.reply_text().len() <= 255);
        assert!(e.reply_text().starts_with("NOT_FOUND - "));
    }
}
