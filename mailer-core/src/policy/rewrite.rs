//! Envelope sender rewriting for relayed mail (`mail_from` of a relay action).
//!
//! Only the envelope changes: the header From is the author's and is never touched. The null
//! sender of bounces stays null, or a bounce could itself bounce (RFC 5321 §4.5.5).

use crate::address::Address;
use crate::config::MailFromRewrite;

/// The MAIL FROM to use upstream for `sender` under `rule`.
pub fn rewrite_sender(sender: Option<&Address>, rule: Option<&MailFromRewrite>) -> Option<Address> {
    let sender = sender?;
    match rule {
        None => Some(sender.clone()),
        Some(MailFromRewrite::Address(a)) => Some(a.clone()),
        Some(MailFromRewrite::Domain(d)) => Some(
            Address::from_parts(sender.local_part(), d)
                .expect("a local part taken from a valid address and a validated domain"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    #[test]
    fn domain_rewrite_keeps_the_local_part() {
        let rule = MailFromRewrite::Domain("ublog.tech".into());
        assert_eq!(
            rewrite_sender(Some(&a("notifications@mastodon.local")), Some(&rule)),
            Some(a("notifications@ublog.tech"))
        );
    }

    #[test]
    fn address_rewrite_replaces_everything() {
        let rule = MailFromRewrite::Address(a("bounces@ublog.tech"));
        assert_eq!(
            rewrite_sender(Some(&a("x@y.org")), Some(&rule)),
            Some(a("bounces@ublog.tech"))
        );
    }

    #[test]
    fn null_sender_stays_null() {
        let rule = MailFromRewrite::Domain("ublog.tech".into());
        assert_eq!(rewrite_sender(None, Some(&rule)), None);
    }
}
