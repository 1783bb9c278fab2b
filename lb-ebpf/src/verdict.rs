//! What a program decided, before it is turned into an XDP or TC return code.

use lb_common::{Reason, ReasonClass};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Continue to the stack (possibly rewritten).
    Pass,
    Drop,
    /// Send back out of the interface it arrived on (a reject we built, or a balanced
    /// packet whose next hop is on that interface).
    Bounce,
    /// Sent to another device by a redirect helper that took it already (XDP: the fast
    /// path's `bpf_redirect_map`; TC: `bpf_redirect_neigh`).
    Redirect,
}

#[derive(Clone, Copy)]
pub struct Verdict {
    pub action: Action,
    pub reason: Reason,
}

impl Verdict {
    #[inline(always)]
    pub const fn pass(reason: Reason) -> Self {
        Self {
            action: Action::Pass,
            reason,
        }
    }
    #[inline(always)]
    pub const fn drop(reason: Reason) -> Self {
        Self {
            action: Action::Drop,
            reason,
        }
    }
    #[inline(always)]
    pub const fn bounce(reason: Reason) -> Self {
        Self {
            action: Action::Bounce,
            reason,
        }
    }
    /// A balanced packet's verdict: `action` says how it leaves, `reason` why.
    #[inline(always)]
    pub const fn balanced(action: Action, reason: Reason) -> Self {
        Self { action, reason }
    }
    /// The verdict for a reason that ends processing early, by its class: a drop drops,
    /// anything else passes the packet untouched (an early end has rewritten nothing and
    /// built no reject to send back).
    #[inline(always)]
    pub fn early(reason: Reason) -> Self {
        match reason.class() {
            ReasonClass::Drop => Self::drop(reason),
            ReasonClass::Pass
            | ReasonClass::Lb
            | ReasonClass::Reply
            | ReasonClass::Icmp
            | ReasonClass::Reject => Self::pass(reason),
        }
    }
}
