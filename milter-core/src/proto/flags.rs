//! Negotiation bit sets and macro stages, with the values of libmilter's `mfapi.h`.

use bitflags::bitflags;

bitflags! {
    /// Modifications a milter may make at end of message (`SMFIF_*`).
    ///
    /// The MTA offers a set; the milter asks for a subset; only negotiated actions may be sent.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Actions: u32 {
        /// Add and insert headers (`SMFIF_ADDHDRS`).
        const ADD_HEADERS = 0x01;
        /// Replace the body (`SMFIF_CHGBODY`).
        const CHANGE_BODY = 0x02;
        /// Add recipients (`SMFIF_ADDRCPT`).
        const ADD_RCPT = 0x04;
        /// Delete recipients (`SMFIF_DELRCPT`).
        const DELETE_RCPT = 0x08;
        /// Change and delete headers (`SMFIF_CHGHDRS`).
        const CHANGE_HEADERS = 0x10;
        /// Quarantine the message (`SMFIF_QUARANTINE`).
        const QUARANTINE = 0x20;
        /// Change the envelope sender (`SMFIF_CHGFROM`).
        const CHANGE_FROM = 0x40;
        /// Add recipients with ESMTP arguments (`SMFIF_ADDRCPT_PAR`).
        const ADD_RCPT_WITH_ARGS = 0x80;
        /// Send macro lists in the negotiation reply (`SMFIF_SETSYMLIST`).
        const SET_MACROS = 0x100;
    }
}

bitflags! {
    /// Protocol steps and options (`SMFIP_*`).
    ///
    /// `NO_*` bits ask the MTA not to send an event, `NR_*` bits promise that the milter
    /// will not reply to one. The MTA offers the bits it understands.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct ProtocolFlags: u32 {
        /// Do not send CONNECT (`SMFIP_NOCONNECT`).
        const NO_CONNECT = 0x1;
        /// Do not send HELO (`SMFIP_NOHELO`).
        const NO_HELO = 0x2;
        /// Do not send MAIL (`SMFIP_NOMAIL`).
        const NO_MAIL = 0x4;
        /// Do not send RCPT (`SMFIP_NORCPT`).
        const NO_RCPT = 0x8;
        /// Do not send BODY (`SMFIP_NOBODY`).
        const NO_BODY = 0x10;
        /// Do not send HEADER (`SMFIP_NOHDRS`).
        const NO_HEADERS = 0x20;
        /// Do not send EOH (`SMFIP_NOEOH`).
        const NO_EOH = 0x40;
        /// No reply to HEADER (`SMFIP_NR_HDR`, also known as `SMFIP_NOHREPL`).
        const NR_HEADER = 0x80;
        /// Do not send UNKNOWN (`SMFIP_NOUNKNOWN`).
        const NO_UNKNOWN = 0x100;
        /// Do not send DATA (`SMFIP_NODATA`).
        const NO_DATA = 0x200;
        /// The MTA understands SKIP (`SMFIP_SKIP`).
        const SKIP = 0x400;
        /// Send rejected recipients too (`SMFIP_RCPT_REJ`).
        const RCPT_REJ = 0x800;
        /// No reply to CONNECT (`SMFIP_NR_CONN`).
        const NR_CONNECT = 0x1000;
        /// No reply to HELO (`SMFIP_NR_HELO`).
        const NR_HELO = 0x2000;
        /// No reply to MAIL (`SMFIP_NR_MAIL`).
        const NR_MAIL = 0x4000;
        /// No reply to RCPT (`SMFIP_NR_RCPT`).
        const NR_RCPT = 0x8000;
        /// No reply to DATA (`SMFIP_NR_DATA`).
        const NR_DATA = 0x10000;
        /// No reply to UNKNOWN (`SMFIP_NR_UNKN`).
        const NR_UNKNOWN = 0x20000;
        /// No reply to EOH (`SMFIP_NR_EOH`).
        const NR_EOH = 0x40000;
        /// No reply to BODY (`SMFIP_NR_BODY`).
        const NR_BODY = 0x80000;
        /// Header values keep their leading space, both ways (`SMFIP_HDR_LEADSPC`).
        const HEADER_LEADING_SPACE = 0x100000;
        /// Frames up to 256 KiB (`SMFIP_MDS_256K`); Postfix never offers it.
        const MDS_256K = 0x1000_0000;
        /// Frames up to 1 MiB (`SMFIP_MDS_1M`); Postfix never offers it.
        const MDS_1M = 0x2000_0000;
    }
}

impl ProtocolFlags {
    /// Every `NR_*` bit.
    pub const ALL_NO_REPLY: ProtocolFlags = ProtocolFlags::NR_HEADER
        .union(ProtocolFlags::NR_CONNECT)
        .union(ProtocolFlags::NR_HELO)
        .union(ProtocolFlags::NR_MAIL)
        .union(ProtocolFlags::NR_RCPT)
        .union(ProtocolFlags::NR_DATA)
        .union(ProtocolFlags::NR_UNKNOWN)
        .union(ProtocolFlags::NR_EOH)
        .union(ProtocolFlags::NR_BODY);

    /// What Postfix 3.x offers with `milter_protocol = 6` (`MILTER8_V6_PROTO_MASK`).
    pub const POSTFIX_V6: ProtocolFlags = ProtocolFlags::from_bits_truncate(0x001F_FFFF);
}

/// A macro stage as numbered in the negotiation reply's macro lists (`SMFIM_*`).
///
/// Note the wire order: end of message (5) comes before end of headers (6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// Macros sent with CONNECT.
    Connect = 0,
    /// Macros sent with HELO.
    Helo = 1,
    /// Macros sent with MAIL.
    MailFrom = 2,
    /// Macros sent with RCPT.
    RcptTo = 3,
    /// Macros sent with DATA.
    Data = 4,
    /// Macros sent with end of message.
    EndOfMessage = 5,
    /// Macros sent with end of headers.
    EndOfHeaders = 6,
}

impl Stage {
    /// Every stage, in wire-number order.
    pub const ALL: [Stage; 7] = [
        Stage::Connect,
        Stage::Helo,
        Stage::MailFrom,
        Stage::RcptTo,
        Stage::Data,
        Stage::EndOfMessage,
        Stage::EndOfHeaders,
    ];

    /// The stage for a wire number, if it is one.
    pub fn from_u32(n: u32) -> Option<Stage> {
        Stage::ALL.get(usize::try_from(n).ok()?).copied()
    }

    /// The command code whose macro frame (`D`) carries this stage's macros.
    pub fn command_code(self) -> u8 {
        crate::proto::rules::stage_command(self)
    }
}
