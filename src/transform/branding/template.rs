//! Branding templates: `{{name}}` placeholders, the built-in header/footer/text footer, and
//! rendering with HTML escaping.
//!
//! Templates are parsed once when saved (so a typo in a placeholder is an admin error, not a
//! silent blank in every mail) and again when a project's branding is loaded. Values are
//! HTML-escaped in HTML templates and inserted as they are in the text footer. The built-in
//! HTML uses tables and inline styles only, which is what Outlook, Gmail and Apple Mail render
//! alike.

/// Widest the logo is shown, in CSS pixels.
pub const LOGO_MAX_WIDTH: u32 = 200;
/// Present in every HTML block the relay inserts; a part that already has it is not branded again.
pub const HTML_MARKER: &str = "smtp-relay-branding";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    DisplayName,
    ContactEmail,
    ContactPhone,
    /// The logo's `src`: `cid:…` for the embedded image or the hosted URL.
    LogoSrc,
    /// A ready `<img>` tag (or the display name when there is no logo).
    Logo,
}

pub const PLACEHOLDERS: &[(&str, Var)] = &[
    ("display_name", Var::DisplayName),
    ("contact_email", Var::ContactEmail),
    ("contact_phone", Var::ContactPhone),
    ("logo_src", Var::LogoSrc),
    ("logo", Var::Logo),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    Var(Var),
}

/// A parsed template; newlines are stored as `\n` and written as the part's own line break.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segs: Vec<Seg>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown placeholder {{{{{0}}}}}; known: display_name, contact_email, contact_phone, logo_src, logo"
)]
pub struct UnknownPlaceholder(pub String);

/// The values a template can show.
#[derive(Debug, Clone, Default)]
pub struct Values {
    pub display_name: String,
    pub contact_email: String,
    pub contact_phone: String,
    /// Display width of the logo, when known.
    pub logo_width: Option<u32>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, UnknownPlaceholder> {
        let text = text.replace("\r\n", "\n").replace('\r', "\n");
        let mut segs = Vec::new();
        let mut rest = text.as_str();
        while let Some(open) = rest.find("{{") {
            let Some(close) = rest[open + 2..].find("}}") else {
                break;
            };
            let name = rest[open + 2..open + 2 + close].trim();
            let var = PLACEHOLDERS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
                .ok_or_else(|| UnknownPlaceholder(name.chars().take(40).collect()))?;
            if open > 0 {
                segs.push(Seg::Lit(rest[..open].to_string()));
            }
            segs.push(Seg::Var(var));
            rest = &rest[open + 2 + close + 2..];
        }
        if !rest.is_empty() {
            segs.push(Seg::Lit(rest.to_string()));
        }
        Ok(Template { segs })
    }

    pub fn uses_logo(&self) -> bool {
        self.segs
            .iter()
            .any(|s| matches!(s, Seg::Var(Var::Logo | Var::LogoSrc)))
    }

    /// Renders with `newline` as line break. `logo_src` is empty when there is no logo.
    pub fn render(&self, v: &Values, logo_src: &str, html: bool, newline: &str) -> String {
        let mut out = String::new();
        let esc = |s: &str| if html { escape(s) } else { s.to_string() };
        for seg in &self.segs {
            match seg {
                Seg::Lit(s) => out.push_str(s),
                Seg::Var(Var::DisplayName) => out.push_str(&esc(&v.display_name)),
                Seg::Var(Var::ContactEmail) => out.push_str(&esc(&v.contact_email)),
                Seg::Var(Var::ContactPhone) => out.push_str(&esc(&v.contact_phone)),
                Seg::Var(Var::LogoSrc) => out.push_str(&esc(logo_src)),
                Seg::Var(Var::Logo) if !html => {}
                Seg::Var(Var::Logo) if logo_src.is_empty() => out.push_str(&format!(
                    "<span style=\"font-family:Arial,Helvetica,sans-serif;font-size:20px;font-weight:bold;color:#333333;\">{}</span>",
                    escape(&v.display_name)
                )),
                Seg::Var(Var::Logo) => {
                    let width = v
                        .logo_width
                        .map(|w| format!(" width=\"{}\"", w.min(LOGO_MAX_WIDTH)))
                        .unwrap_or_default();
                    out.push_str(&format!(
                        "<img src=\"{}\" alt=\"{}\"{width} style=\"display:block;margin:0 auto;border:0;outline:none;text-decoration:none;max-width:{LOGO_MAX_WIDTH}px;height:auto;\">",
                        escape(logo_src),
                        escape(&v.display_name)
                    ))
                }
            }
        }
        if newline != "\n" {
            out = out.replace('\n', newline);
        }
        out
    }
}

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// The built-in header: the logo (or the name) centred on top.
pub fn builtin_header() -> String {
    concat!(
        "<table role=\"presentation\" width=\"100%\" cellpadding=\"0\" cellspacing=\"0\" border=\"0\" style=\"border-collapse:collapse;\">\n",
        "<tr><td align=\"center\" style=\"padding:24px 16px 16px 16px;\">{{logo}}</td></tr>\n",
        "</table>"
    )
    .to_string()
}

/// The built-in footer: name and whichever contacts exist, small and grey.
pub fn builtin_footer(has_email: bool, has_phone: bool) -> String {
    let link = "color:#888888;text-decoration:underline;";
    let mut contacts = Vec::new();
    if has_email {
        contacts.push(format!(
            "<a href=\"mailto:{{{{contact_email}}}}\" style=\"{link}\">{{{{contact_email}}}}</a>"
        ));
    }
    if has_phone {
        contacts.push("<span style=\"color:#888888;\">{{contact_phone}}</span>".to_string());
    }
    let mut s = String::from(concat!(
        "<table role=\"presentation\" width=\"100%\" cellpadding=\"0\" cellspacing=\"0\" border=\"0\" style=\"border-collapse:collapse;\">\n",
        "<tr><td align=\"center\" style=\"padding:24px 16px;font-family:Arial,Helvetica,sans-serif;font-size:12px;line-height:18px;color:#888888;\">\n",
        "{{display_name}}"
    ));
    if !contacts.is_empty() {
        s.push_str("<br>\n");
        s.push_str(&contacts.join(" &middot; "));
    }
    s.push_str("\n</td></tr>\n</table>");
    s
}

/// The built-in text footer: a signature block ("-- " makes clients grey it out).
pub fn builtin_text_footer(has_email: bool, has_phone: bool) -> String {
    let mut s = String::from("\n-- \n{{display_name}}");
    let contacts: Vec<&str> = [
        has_email.then_some("{{contact_email}}"),
        has_phone.then_some("{{contact_phone}}"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !contacts.is_empty() {
        s.push('\n');
        s.push_str(&contacts.join(" | "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Values {
        Values {
            display_name: "Acme & <Sons> \"Ltd\"".into(),
            contact_email: "help@acme.test".into(),
            contact_phone: "+1 555 0100".into(),
            logo_width: Some(640),
        }
    }

    #[test]
    fn placeholders_are_checked_and_escaped() {
        assert_eq!(
            Template::parse("hi {{ nmae }}").unwrap_err(),
            UnknownPlaceholder("nmae".into())
        );
        let t = Template::parse("<b>{{display_name}}</b>\r\n{{ contact_phone }} {{").unwrap();
        assert_eq!(
            t.render(&values(), "", true, "\r\n"),
            "<b>Acme &amp; &lt;Sons&gt; &quot;Ltd&quot;</b>\r\n+1 555 0100 {{"
        );
        assert_eq!(
            t.render(&values(), "", false, "\n"),
            "<b>Acme & <Sons> \"Ltd\"</b>\n+1 555 0100 {{"
        );
    }

    #[test]
    fn logo_tag_or_name() {
        let t = Template::parse(&builtin_header()).unwrap();
        assert!(t.uses_logo());
        let with = t.render(&values(), "cid:logo@x", true, "\r\n");
        assert!(with.contains(
            "<img src=\"cid:logo@x\" alt=\"Acme &amp; &lt;Sons&gt; &quot;Ltd&quot;\" width=\"200\""
        ));
        let without = t.render(&values(), "", true, "\r\n");
        assert!(!without.contains("<img") && without.contains(">Acme &amp;"));
        let footer = Template::parse(&builtin_footer(true, false)).unwrap();
        let f = footer.render(&values(), "", true, "\n");
        assert!(f.contains("mailto:help@acme.test") && !f.contains("555"));
        let text = Template::parse(&builtin_text_footer(true, true)).unwrap();
        assert_eq!(
            text.render(&values(), "", false, "\r\n"),
            "\r\n-- \r\nAcme & <Sons> \"Ltd\"\r\nhelp@acme.test | +1 555 0100"
        );
    }
}
