//! Provider presets: `provider = "office365"` in an `[upstream.<name>]` table fills in what the
//! provider documents — host, port, TLS mode, AUTH mechanism, a fixed username where there is
//! one, and its sending limits — so a sysadmin only adds the credentials. Any field written
//! explicitly in the table wins over the preset (`port = 465` next to `provider = "sendgrid"`).
//!
//! The figures come from each provider's public documentation, cited beside each preset; they
//! change over time, which is exactly why every one of them can be overridden. Limits the
//! provider does not publish are left unset (no artificial cap).

use serde::{Deserialize, Serialize};

use super::{Rate, UpstreamAuth, UpstreamConfig, UpstreamTls};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Sendgrid,
    Ses,
    Gmail,
    Office365,
    Resend,
    Aliyun,
    Mailgun,
    Postmark,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Sendgrid => "sendgrid",
            Provider::Ses => "ses",
            Provider::Gmail => "gmail",
            Provider::Office365 => "office365",
            Provider::Resend => "resend",
            Provider::Aliyun => "aliyun",
            Provider::Mailgun => "mailgun",
            Provider::Postmark => "postmark",
        }
    }
}

/// What a provider's SPF needs, for `domain verify` (domain_check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpfInfo {
    /// The mechanism the provider documents for the sender's SPF record.
    pub include: &'static str,
    /// Whether the provider sends with its own envelope sender (bounce domain) unless a custom
    /// MAIL FROM / return-path domain is set up there: then SPF passes for the provider's
    /// domain, not yours, and DMARC can align only through DKIM.
    pub own_envelope_sender: bool,
}

impl Provider {
    /// The SPF `include:` each provider documents:
    /// SendGrid twilio.com/docs/sendgrid/ui/account-and-settings/spf-records (include:sendgrid.net;
    /// return path on SendGrid's domain unless domain authentication is set up);
    /// SES docs.aws.amazon.com/ses/latest/dg/send-email-authentication-spf.html (include:amazonses.com;
    /// MAIL FROM amazonses.com unless a custom MAIL FROM domain);
    /// Google support.google.com/a/answer/10685031 (include:_spf.google.com; the mailbox's own envelope);
    /// Microsoft 365 learn.microsoft.com/en-us/defender-office-365/email-authentication-spf-configure
    /// (include:spf.protection.outlook.com; the mailbox's own envelope);
    /// Resend resend.com/docs/dashboard/domains/introduction (include:amazonses.com on its send subdomain);
    /// Mailgun documentation.mailgun.com, "Verifying your domain" (include:mailgun.org);
    /// Postmark postmarkapp.com/support/article/1092-how-do-i-set-up-spf-for-postmark (include:spf.mtasv.net);
    /// Alibaba Direct Mail alibabacloud.com/help/en/direct-mail, "Configure SPF" (include:spf1.dm.aliyun.com).
    pub fn spf(self) -> SpfInfo {
        let (include, own_envelope_sender) = match self {
            Provider::Sendgrid => ("include:sendgrid.net", true),
            Provider::Ses => ("include:amazonses.com", true),
            Provider::Gmail => ("include:_spf.google.com", false),
            Provider::Office365 => ("include:spf.protection.outlook.com", false),
            Provider::Resend => ("include:amazonses.com", true),
            Provider::Mailgun => ("include:mailgun.org", true),
            Provider::Postmark => ("include:spf.mtasv.net", true),
            Provider::Aliyun => ("include:spf1.dm.aliyun.com", true),
        };
        SpfInfo {
            include,
            own_envelope_sender,
        }
    }
}

/// What a preset contributes. `None` leaves the field to the config (or its default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preset {
    pub host: Option<String>,
    pub port: u16,
    pub tls: UpstreamTls,
    pub auth: UpstreamAuth,
    pub username: Option<&'static str>,
    pub max_connections: Option<usize>,
    pub max_messages_per_connection: Option<usize>,
    pub max_rate: Option<Rate>,
    /// OAuth2 token endpoint for `auth = "xoauth2"` (`{tenant}` is replaced).
    pub token_url: Option<&'static str>,
    /// OAuth2 scope for `auth = "xoauth2"`.
    pub scope: Option<&'static str>,
}

const fn rate(count: u32, per_secs: u64) -> Option<Rate> {
    Some(Rate { count, per_secs })
}

/// The documented settings of `provider`. `region` is only used by SES.
pub fn preset(provider: Provider, region: Option<&str>) -> Preset {
    let base = Preset {
        host: None,
        port: 587,
        tls: UpstreamTls::Starttls,
        auth: UpstreamAuth::Plain,
        username: None,
        max_connections: None,
        max_messages_per_connection: None,
        max_rate: None,
        token_url: None,
        scope: None,
    };
    match provider {
        // Twilio SendGrid, "Integrating with the SMTP API"
        // (twilio.com/docs/sendgrid/for-developers/sending-email/integrating-with-the-smtp-api):
        // smtp.sendgrid.net, TLS on 587 (SSL on 465), username is the literal "apikey", the
        // password an API key; "up to 5k messages per SMTP connection", "up to 10k concurrent
        // connections from a single server".
        Provider::Sendgrid => Preset {
            host: Some("smtp.sendgrid.net".into()),
            username: Some("apikey"),
            max_connections: Some(10_000),
            max_messages_per_connection: Some(5_000),
            ..base
        },
        // Amazon SES, "Connecting to an Amazon SES SMTP endpoint"
        // (docs.aws.amazon.com/ses/latest/dg/smtp-connect.html): email-smtp.<region>.amazonaws.com,
        // STARTTLS on 25/587/2587, TLS wrapper on 465/2465; SMTP credentials are per region.
        // The maximum send rate is per account (1 message/s in the sandbox, raised on request;
        // SES answers "454 Throttling failure: Maximum sending rate exceeded"), so there is no
        // rate here: `max_rate` must come from the config (see `config.rs` validation).
        Provider::Ses => Preset {
            host: region.map(|r| format!("email-smtp.{r}.amazonaws.com")),
            ..base
        },
        // Google, "OAuth 2.0 Mechanism" for SMTP (developers.google.com/workspace/gmail/imap/xoauth2-protocol)
        // and "Gmail sending limits in Google Workspace" (support.google.com/a/answer/166852):
        // smtp.gmail.com:587 STARTTLS, AUTH XOAUTH2 with a https://mail.google.com/ token from
        // oauth2.googleapis.com; 2,000 messages per day per user.
        Provider::Gmail => Preset {
            host: Some("smtp.gmail.com".into()),
            auth: UpstreamAuth::Xoauth2,
            max_rate: rate(2_000, 86_400),
            token_url: Some("https://oauth2.googleapis.com/token"),
            scope: Some("https://mail.google.com/"),
            ..base
        },
        // Microsoft, "Message storage and concurrent connection throttling for SMTP
        // Authenticated Submission" (learn.microsoft.com/en-us/exchange/troubleshoot/send-emails/smtp-submission-improvements)
        // and "Authenticate an IMAP, POP or SMTP connection using OAuth"
        // (learn.microsoft.com/en-us/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth):
        // smtp.office365.com:587 STARTTLS, AUTH XOAUTH2; at most three concurrent connections
        // per mailbox ("432 4.3.2 Concurrent connections limit exceeded"), 30 messages per
        // minute, 10,000 recipients per day. Client credentials use the
        // https://outlook.office365.com/.default scope.
        Provider::Office365 => Preset {
            host: Some("smtp.office365.com".into()),
            auth: UpstreamAuth::Xoauth2,
            max_connections: Some(3),
            max_rate: rate(30, 60),
            token_url: Some("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"),
            scope: Some("https://outlook.office365.com/.default"),
            ..base
        },
        // Resend, "Send emails with SMTP" (resend.com/docs/send-with-smtp): smtp.resend.com,
        // implicit TLS on 465/2465 (STARTTLS on 25/587/2587), username "resend", password an
        // API key; "the rate limit is the same as the API": 2 requests per second by default
        // (resend.com/docs/api-reference/introduction).
        Provider::Resend => Preset {
            host: Some("smtp.resend.com".into()),
            port: 465,
            tls: UpstreamTls::Implicit,
            username: Some("resend"),
            max_rate: rate(2, 1),
            ..base
        },
        // Alibaba Cloud Direct Mail, "Send emails using SMTP" and "Email sending FAQ"
        // (alibabacloud.com/help/en/direct-mail/user-guide/send-emails-using-smtp): smtpdm.aliyun.com,
        // port 465 with SSL (80 without; 25 is blocked on ECS); the username must be the
        // sender address, with an SMTP password set in the console. Quotas are per account
        // and change weekly, so no rate here.
        Provider::Aliyun => Preset {
            host: Some("smtpdm.aliyun.com".into()),
            port: 465,
            tls: UpstreamTls::Implicit,
            ..base
        },
        // Mailgun, "Sending via SMTP" (documentation.mailgun.com, SMTP section): smtp.mailgun.org
        // (smtp.eu.mailgun.org for EU domains), 587 STARTTLS or 465 TLS, per-domain SMTP
        // credentials such as postmaster@<domain>, plain-text AUTH inside TLS.
        Provider::Mailgun => Preset {
            host: Some("smtp.mailgun.org".into()),
            ..base
        },
        // Postmark, "Sending email with SMTP" (postmarkapp.com/developer/user-guide/send-email-with-smtp):
        // smtp.postmarkapp.com on 25/2525/587 with STARTTLS; the server API token is both the
        // username and the password (or an SMTP token's access/secret key pair).
        Provider::Postmark => Preset {
            host: Some("smtp.postmarkapp.com".into()),
            ..base
        },
    }
}

/// Fills every field the config left unset from the provider's preset. Returns the key and a
/// message when the preset needs something only the config can give.
pub fn apply(u: &mut UpstreamConfig) -> Result<(), (&'static str, String)> {
    let Some(provider) = u.provider else {
        return Ok(());
    };
    let p = preset(provider, u.region.as_deref());
    if u.host.is_none() {
        match p.host {
            Some(h) => u.host = Some(h),
            None if provider == Provider::Ses => {
                return Err((
                    "region",
                    "provider = \"ses\" needs `region` (e.g. \"eu-west-1\") or an explicit `host`"
                        .into(),
                ));
            }
            None => {}
        }
    }
    u.port.get_or_insert(p.port);
    u.tls.get_or_insert(p.tls);
    u.auth.get_or_insert(p.auth);
    if u.username.is_none() {
        u.username = p.username.map(str::to_string);
    }
    if u.max_connections.is_none() {
        u.max_connections = p.max_connections;
    }
    if u.max_messages_per_connection.is_none() {
        u.max_messages_per_connection = p.max_messages_per_connection;
    }
    if u.max_rate.is_none() {
        u.max_rate = p.max_rate;
    }
    if provider == Provider::Ses && u.max_rate.is_none() {
        return Err((
            "max_rate",
            "provider = \"ses\" needs your account's maximum send rate, e.g. max_rate = \"14/s\" \
             (SES console → Account dashboard → Sending quota; 1/s in the sandbox)"
                .into(),
        ));
    }
    if let Some(o) = u.oauth2.as_mut() {
        if o.token_url.is_none()
            && let Some(url) = p.token_url
        {
            if url.contains("{tenant}") {
                match o.tenant.as_deref() {
                    Some(t) => o.token_url = Some(url.replace("{tenant}", t)),
                    None => {
                        return Err((
                            "oauth2.tenant",
                            format!(
                                "provider = \"{}\" needs `oauth2.tenant` (your directory id) or `oauth2.token_url`",
                                provider.as_str()
                            ),
                        ));
                    }
                }
            } else {
                o.token_url = Some(url.to_string());
            }
        }
        if o.scope.is_none() {
            o.scope = p.scope.map(str::to_string);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn upstream(table: &str) -> Result<UpstreamConfig, String> {
        let text = crate::config::DEFAULT_CONFIG.replace(
            "[upstream.outbox]",
            &format!("{table}\n\n[upstream.outbox]"),
        );
        Config::parse(&text, "t.toml")
            .map(|c| c.upstreams["p"].clone())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn presets_fill_unset_fields() {
        let u = upstream(
            "[upstream.p]\ntype = \"smtp\"\nprovider = \"office365\"\nusername = \"app@corp.example\"\npassword_env = \"X\"\nauth = \"login\"",
        )
        .unwrap();
        assert_eq!(u.host.as_deref(), Some("smtp.office365.com"));
        assert_eq!(u.port, Some(587));
        assert_eq!(u.tls, Some(UpstreamTls::Starttls));
        assert_eq!(u.auth, Some(UpstreamAuth::Login), "explicit auth wins");
        assert_eq!(
            u.max_rate,
            Some(Rate {
                count: 30,
                per_secs: 60
            })
        );
        assert_eq!(u.max_connections, Some(3));

        let u = upstream(
            "[upstream.p]\ntype = \"smtp\"\nprovider = \"sendgrid\"\nport = 465\ntls = \"implicit\"\npassword_env = \"X\"",
        )
        .unwrap();
        assert_eq!(u.host.as_deref(), Some("smtp.sendgrid.net"));
        assert_eq!(u.port, Some(465), "explicit port wins");
        assert_eq!(u.tls, Some(UpstreamTls::Implicit));
        assert_eq!(u.username.as_deref(), Some("apikey"));
        assert_eq!(u.max_messages_per_connection, Some(5000));

        let u = upstream(
            "[upstream.p]\ntype = \"smtp\"\nprovider = \"resend\"\nmax_rate = \"10/s\"\npassword_env = \"X\"",
        )
        .unwrap();
        assert_eq!((u.port, u.tls), (Some(465), Some(UpstreamTls::Implicit)));
        assert_eq!(
            u.max_rate,
            Some(Rate {
                count: 10,
                per_secs: 1
            })
        );
    }

    #[test]
    fn ses_needs_region_and_rate() {
        let err = upstream("[upstream.p]\ntype = \"smtp\"\nprovider = \"ses\"\nusername = \"AKIA\"\npassword_env = \"X\"").unwrap_err();
        assert!(err.contains("upstream.p.region"), "{err}");
        let err = upstream("[upstream.p]\ntype = \"smtp\"\nprovider = \"ses\"\nregion = \"eu-west-1\"\nusername = \"AKIA\"\npassword_env = \"X\"").unwrap_err();
        assert!(err.contains("upstream.p.max_rate"), "{err}");
        let u = upstream("[upstream.p]\ntype = \"smtp\"\nprovider = \"ses\"\nregion = \"eu-west-1\"\nmax_rate = \"14/s\"\nusername = \"AKIA\"\npassword_env = \"X\"").unwrap();
        assert_eq!(
            u.host.as_deref(),
            Some("email-smtp.eu-west-1.amazonaws.com")
        );
    }

    #[test]
    fn oauth_presets_fill_token_url_and_scope() {
        let u = upstream(
            "[upstream.p]\ntype = \"smtp\"\nprovider = \"office365\"\nusername = \"app@corp.example\"\n[upstream.p.oauth2]\ntenant = \"contoso\"\nclient_id = \"id\"\nclient_secret_env = \"S\"",
        )
        .unwrap();
        let o = u.oauth2.unwrap();
        assert_eq!(
            o.token_url.as_deref(),
            Some("https://login.microsoftonline.com/contoso/oauth2/v2.0/token")
        );
        assert_eq!(
            o.scope.as_deref(),
            Some("https://outlook.office365.com/.default")
        );
        let err = upstream(
            "[upstream.p]\ntype = \"smtp\"\nprovider = \"office365\"\nusername = \"a@b.example\"\n[upstream.p.oauth2]\nclient_id = \"id\"\nclient_secret_env = \"S\"",
        )
        .unwrap_err();
        assert!(err.contains("oauth2.tenant"), "{err}");
    }

    #[test]
    fn every_preset_has_a_host_port_and_tls() {
        for p in [
            Provider::Sendgrid,
            Provider::Gmail,
            Provider::Office365,
            Provider::Resend,
            Provider::Aliyun,
            Provider::Mailgun,
            Provider::Postmark,
        ] {
            let pre = preset(p, None);
            assert!(pre.host.is_some(), "{p:?}");
            assert!(matches!(pre.port, 465 | 587), "{p:?}");
        }
        assert!(preset(Provider::Ses, Some("us-east-1")).host.is_some());
    }
}
