//! Where a connection stands in the command order, shared by both sessions: the MTA side
//! asks it before sending a command, the milter side before accepting one, and both apply
//! the same verdict effects from [`rules`]. Only the error type differs: the MTA side
//! refuses its API user, the milter side refuses its peer.

use crate::negotiate::Negotiated;
use crate::proto::command::code;
use crate::proto::rules::{self, Answer, Effect, Place};

/// The connection, as far as command order goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conn {
    /// Before the negotiation answer.
    Fresh,
    /// Negotiated (or after QUIT_NC); CONNECT comes next.
    AwaitConnect,
    /// Connected.
    Connected,
    /// The milter ended the connection with its verdict; only QUIT or QUIT_NC may follow.
    Done,
    /// QUIT.
    Closed,
}

/// Which side consults the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The MTA records every command, even one negotiated away (it sends its macros
    /// still), so it never needs to infer a step it did not see.
    Mta,
    /// The milter does not see commands negotiated away: a later step may come when every
    /// required step before it was negotiated away.
    Milter,
}

/// Why a command may not come now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// After QUIT.
    Closed,
    /// A reply is due first.
    ReplyDue,
    /// Not in this state; the phrase says where the session is.
    OutOfOrder(&'static str),
}

impl Refusal {
    pub(crate) fn phrase(self) -> &'static str {
        match self {
            Refusal::Closed => "after QUIT",
            Refusal::ReplyDue => "while a reply is due",
            Refusal::OutOfOrder(p) => p,
        }
    }
}

/// A command that may come now, and what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admitted {
    /// The order once the command is taken.
    pub next: Order,
    /// It goes on the wire (the MTA does not send a command negotiated away).
    pub sent: bool,
    /// The milter owes an answer.
    pub awaits_reply: bool,
    /// The milter negotiated not to answer it (`NR_*`).
    pub no_reply: bool,
    /// An ABORT outside a message: nothing to abort.
    pub idle_abort: bool,
}

/// The command order of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Order {
    pub conn: Conn,
    /// The rank of the message step last taken ([`Place::Message`]); 0 outside a message.
    pub msg: u8,
    /// The command awaiting its answer.
    pub pending: Option<u8>,
}

const fn rank_of(c: u8) -> u8 {
    let mut i = 0;
    while i < rules::COMMANDS.len() {
        if rules::COMMANDS[i].code == c
            && let Place::Message { rank, .. } = rules::COMMANDS[i].place
        {
            return rank;
        }
        i += 1;
    }
    0
}

/// Message content starts at DATA: HELO and UNKNOWN may not come from there on.
const CONTENT_RANK: u8 = rank_of(code::DATA);

impl Order {
    pub(crate) fn new() -> Order {
        Order {
            conn: Conn::Fresh,
            msg: 0,
            pending: None,
        }
    }

    pub(crate) fn in_message(&self) -> bool {
        self.msg != 0
    }

    pub(crate) fn in_content(&self) -> bool {
        self.msg >= CONTENT_RANK
    }

    /// Whether command `c` may come now, and the order after it; `self` is unchanged.
    pub(crate) fn check(
        &self,
        c: u8,
        negotiated: Option<&Negotiated>,
        side: Side,
    ) -> Result<Admitted, Refusal> {
        let Some(rule) = rules::command(c) else {
            return Err(Refusal::OutOfOrder("in any state"));
        };
        if self.conn == Conn::Closed {
            return Err(Refusal::Closed);
        }
        let mut next = *self;
        let mut idle_abort = false;
        let skipped = |c: u8| negotiated.is_some_and(|n| n.skipped(c));
        if c == code::QUIT {
            next = Order {
                conn: Conn::Closed,
                msg: 0,
                pending: None,
            };
            return Ok(Admitted {
                next,
                sent: true,
                awaits_reply: false,
                no_reply: false,
                idle_abort,
            });
        }
        if self.pending.is_some() {
            return Err(Refusal::ReplyDue);
        }
        let refuse = |p| Err(Refusal::OutOfOrder(p));
        match (rule.place, self.conn) {
            (Place::Negotiation, Conn::Fresh) => {}
            (Place::Negotiation, _) => return refuse("after negotiation"),
            (_, Conn::Fresh) => return refuse("before negotiation"),
            (Place::Anywhere, _) if c == code::QUIT_NC => {
                next.conn = Conn::AwaitConnect;
                next.msg = 0;
            }
            (_, Conn::Done) => return refuse("after the milter ended the connection"),
            (Place::Anywhere, _) => {
                if c == code::ABORT {
                    idle_abort = !self.in_message();
                    next.msg = 0;
                }
            }
            (Place::Connect, Conn::AwaitConnect) => next.conn = Conn::Connected,
            (Place::Connect, _) => return refuse("after CONNECT"),
            (Place::Envelope | Place::Message { .. }, conn) => {
                if conn == Conn::AwaitConnect {
                    if side == Side::Mta || !skipped(code::CONNECT) {
                        return refuse("before CONNECT");
                    }
                    next.conn = Conn::Connected;
                }
                if let Place::Message { rank, repeats, .. } = rule.place {
                    next.msg = self.message_step(rank, repeats, side, skipped)?;
                } else if self.in_content() {
                    return refuse("inside message content");
                }
            }
        }
        let sent = !(side == Side::Mta && skipped(c));
        let no_reply = negotiated.is_some_and(|n| n.no_reply(c));
        let awaits_reply = sent
            && match rule.answer {
                Answer::Always => true,
                Answer::Never => false,
                Answer::UnlessNoReply => !no_reply,
            };
        if awaits_reply {
            next.pending = Some(c);
        }
        Ok(Admitted {
            next,
            sent,
            awaits_reply,
            no_reply: rule.answer == Answer::UnlessNoReply && no_reply,
            idle_abort,
        })
    }

    /// The message rank after a step of `rank`, if it may follow the current one.
    fn message_step(
        &self,
        rank: u8,
        repeats: bool,
        side: Side,
        skipped: impl Fn(u8) -> bool,
    ) -> Result<u8, Refusal> {
        if rank < self.msg || (rank == self.msg && !repeats) {
            return Err(Refusal::OutOfOrder(if rank == rank_of(code::MAIL) {
                "inside a message"
            } else if rank < CONTENT_RANK {
                "inside message content"
            } else {
                "out of order in the message"
            }));
        }
        // Required steps between may be absent only when the milter negotiated them away.
        let missing = rules::COMMANDS.iter().rev().find(|r| {
            matches!(r.place, Place::Message { rank: between, required: true, .. }
                if between > self.msg && between < rank)
                && (side == Side::Mta || !skipped(r.code))
        });
        match missing.map(|r| r.code) {
            Some(code::MAIL) => Err(Refusal::OutOfOrder("before MAIL")),
            Some(code::RCPT) => Err(Refusal::OutOfOrder("before RCPT")),
            Some(_) => Err(Refusal::OutOfOrder("before a required step")),
            None => Ok(rank),
        }
    }

    /// The negotiation answer came.
    pub(crate) fn negotiated(&mut self) {
        self.conn = Conn::AwaitConnect;
        self.pending = None;
    }

    /// The pending command got its final verdict, with this effect.
    pub(crate) fn answered(&mut self, effect: Effect) {
        self.pending = None;
        match effect {
            Effect::None | Effect::SkipBody => {}
            Effect::EndsMessage => self.msg = 0,
            Effect::EndsConnection => {
                self.msg = 0;
                self.conn = Conn::Done;
            }
        }
    }
}
