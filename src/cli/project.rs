//! `smtp-relay project …`: projects, domains and tokens.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Value, json};

use super::{Cli, admin, fmt_time, load_config, print_json};
use crate::admin::AdminRequest;
use crate::config::{Config, ListenerMode};
use crate::transform::branding::settings::MAX_LOGO_BYTES;
use crate::transform::branding::{BrandingUpdate, SettingsError};

#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Create a project and its first token (shown once).
    Add {
        name: String,
        /// A domain the project may send from (repeat for several).
        #[arg(long = "domain", required = true)]
        domains: Vec<String>,
        /// Label of the first token, e.g. production or staging.
        #[arg(long, default_value = "default")]
        label: String,
        /// Give up on undelivered mail after this many seconds, at least 10
        /// (default: queue.max_age_secs).
        #[arg(long)]
        max_age_secs: Option<u64>,
    },
    /// List projects.
    List,
    /// Show one project.
    Show { id: String },
    /// Manage tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage allowed sender domains.
    Domain {
        #[command(subcommand)]
        command: DomainCommand,
    },
    /// Refuse all logins of a project until enabled again.
    Disable { id: String },
    /// Allow logins of a disabled project again.
    Enable { id: String },
    /// Delete a project and all its tokens.
    Delete { id: String },
    /// Set (or with no value, clear) the project's maximum queue age in seconds (at least 10).
    MaxAge { id: String, secs: Option<u64> },
    /// Show or set whether a message that finally fails sends an RFC 3464 bounce (delivery
    /// status notification) to its envelope sender (off by default).
    Bounces {
        id: String,
        #[arg(value_name = "on|off", value_parser = parse_on_off)]
        state: Option<bool>,
    },
    /// Show or set whether `Sender:` / `Resent-Sender:` may name an address outside the
    /// project's domains (off by default: refused like a foreign `From`).
    SenderPolicy {
        id: String,
        #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
        allow_foreign_sender: Option<bool>,
    },
    /// `live`: mail is sent; `sandbox`: mail goes through the whole pipeline but is captured
    /// (see `smtp-relay sandbox`), except mail to simulated `…@….smtp-relay.test` recipients.
    Mode {
        id: String,
        #[arg(value_parser = ["live", "sandbox"])]
        mode: String,
    },
    /// Show or override the project's rate limits and quotas (defaults: `[limits]`).
    Limits(super::limits::LimitsArgs),
    /// Show the project's upstream route; with --upstream, set it (fallbacks tried in order
    /// when the upstream is unreachable); with --default, go back to the config's route.
    Route {
        id: String,
        #[arg(long)]
        upstream: Option<String>,
        #[arg(long = "fallback", requires = "upstream")]
        fallbacks: Vec<String>,
        #[arg(long = "default", conflicts_with = "upstream")]
        clear: bool,
    },
    /// Show or set the branding injected into every message (no options: show it).
    Branding(BrandingArgs),
}

/// `project branding`: every option given changes that setting and turns branding on.
#[derive(Debug, clap::Args)]
pub struct BrandingArgs {
    pub id: String,
    /// Logo shown on top of HTML mail: PNG, JPEG or GIF, at most 200 KiB (embedded, cid:).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["logo_url", "no_logo"])]
    pub logo: Option<PathBuf>,
    /// Use a hosted https:// image instead of embedding the logo.
    #[arg(long, value_name = "URL", conflicts_with = "no_logo")]
    pub logo_url: Option<String>,
    /// Remove the logo.
    #[arg(long)]
    pub no_logo: bool,
    /// Organisation name (alt text of the logo, footer).
    #[arg(long)]
    pub display_name: Option<String>,
    /// Contact address shown in the footer ("" removes it).
    #[arg(long)]
    pub contact_email: Option<String>,
    /// Contact phone shown in the footer ("" removes it).
    #[arg(long)]
    pub contact_phone: Option<String>,
    /// HTML inserted after <body>; placeholders {{logo}}, {{logo_src}}, {{display_name}},
    /// {{contact_email}}, {{contact_phone}} (values are HTML-escaped).
    #[arg(long, value_name = "FILE")]
    pub header_template: Option<PathBuf>,
    /// HTML inserted before </body>; same placeholders.
    #[arg(long, value_name = "FILE")]
    pub footer_template: Option<PathBuf>,
    /// Plain text appended to text parts; same placeholders (inserted as they are).
    #[arg(long, value_name = "FILE")]
    pub text_footer: Option<PathBuf>,
    /// Go back to the built-in header, footer and text footer.
    #[arg(long, conflicts_with_all = ["header_template", "footer_template", "text_footer"])]
    pub default_templates: bool,
    /// Turn branding on again without changing anything.
    #[arg(long, conflicts_with = "off")]
    pub on: bool,
    /// Turn branding off (settings are kept).
    #[arg(long)]
    pub off: bool,
    /// Save nothing: print a sample password-reset mail (MIME) branded by the real transform,
    /// with the options given here applied on top of the stored settings.
    #[arg(long)]
    pub preview: bool,
}

impl BrandingArgs {
    /// The update to send, or `None` to just show the branding. Files are read here and sent
    /// by content; the server validates them.
    fn update(&self) -> anyhow::Result<Option<BrandingUpdate>> {
        let text = |p: &Option<PathBuf>| -> anyhow::Result<Option<String>> {
            p.as_ref()
                .map(|p| {
                    std::fs::read_to_string(p)
                        .with_context(|| format!("cannot read {} as UTF-8 text", p.display()))
                })
                .transpose()
        };
        let logo = match &self.logo {
            Some(p) => {
                let len = std::fs::metadata(p)
                    .with_context(|| format!("cannot read {}", p.display()))?
                    .len() as usize;
                // Checked here too so a huge file is not pushed through the admin socket.
                if len > MAX_LOGO_BYTES {
                    anyhow::bail!("{}: {}", p.display(), SettingsError::LogoTooLarge(len));
                }
                Some(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?)
            }
            None => None,
        };
        let u = BrandingUpdate {
            display_name: self.display_name.clone(),
            contact_email: self.contact_email.clone(),
            contact_phone: self.contact_phone.clone(),
            logo,
            logo_url: self.logo_url.clone(),
            no_logo: self.no_logo,
            header_template: text(&self.header_template)?,
            footer_template: text(&self.footer_template)?,
            text_footer: text(&self.text_footer)?,
            default_templates: self.default_templates,
            off: self.off,
        };
        let changes = self.on
            || self.off
            || self.no_logo
            || self.default_templates
            || u.display_name.is_some()
            || u.contact_email.is_some()
            || u.contact_phone.is_some()
            || u.logo.is_some()
            || u.logo_url.is_some()
            || u.header_template.is_some()
            || u.footer_template.is_some()
            || u.text_footer.is_some();
        Ok(changes.then_some(u))
    }
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create another token (rotation, or one per environment).
    Add {
        id: String,
        #[arg(long, default_value = "default")]
        label: String,
    },
    /// Revoke a token: the next session using it is refused.
    Revoke { id: String, token_id: String },
}

#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// Allow the project to send from another domain.
    Add { id: String, domain: String },
    /// Stop the project sending from a domain (it must keep at least one).
    Remove { id: String, domain: String },
}

pub fn run(cli: &Cli, cmd: &ProjectCommand) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    let req = match cmd {
        ProjectCommand::Add {
            name,
            domains,
            label,
            max_age_secs,
        } => AdminRequest::ProjectAdd {
            name: name.clone(),
            domains: domains.clone(),
            label: label.clone(),
            max_age_secs: *max_age_secs,
        },
        ProjectCommand::List => AdminRequest::ProjectList,
        ProjectCommand::Show { id } => AdminRequest::ProjectShow { id: id.clone() },
        ProjectCommand::Token {
            command: TokenCommand::Add { id, label },
        } => AdminRequest::TokenAdd {
            id: id.clone(),
            label: label.clone(),
        },
        ProjectCommand::Token {
            command: TokenCommand::Revoke { id, token_id },
        } => AdminRequest::TokenRevoke {
            id: id.clone(),
            token_id: token_id.clone(),
        },
        ProjectCommand::Domain {
            command: DomainCommand::Add { id, domain },
        } => AdminRequest::DomainAdd {
            id: id.clone(),
            domain: domain.clone(),
        },
        ProjectCommand::Domain {
            command: DomainCommand::Remove { id, domain },
        } => AdminRequest::DomainRemove {
            id: id.clone(),
            domain: domain.clone(),
        },
        ProjectCommand::Disable { id } => AdminRequest::ProjectEnable {
            id: id.clone(),
            enabled: false,
        },
        ProjectCommand::Enable { id } => AdminRequest::ProjectEnable {
            id: id.clone(),
            enabled: true,
        },
        ProjectCommand::Delete { id } => AdminRequest::ProjectDelete { id: id.clone() },
        ProjectCommand::MaxAge { id, secs } => AdminRequest::ProjectMaxAge {
            id: id.clone(),
            max_age_secs: *secs,
        },
        ProjectCommand::SenderPolicy {
            id,
            allow_foreign_sender,
        } => AdminRequest::ProjectSenderPolicy {
            id: id.clone(),
            allow_foreign_sender: *allow_foreign_sender,
        },
        ProjectCommand::Branding(args) if args.preview => AdminRequest::BrandingPreview {
            id: args.id.clone(),
            changes: args.update()?,
        },
        ProjectCommand::Bounces { id, state } => AdminRequest::ProjectBounces {
            id: id.clone(),
            enabled: *state,
        },
        ProjectCommand::Branding(args) => AdminRequest::ProjectBranding {
            id: args.id.clone(),
            update: args.update()?,
        },
        ProjectCommand::Limits(args) => args.request(),
        ProjectCommand::Mode { id, mode } => AdminRequest::ProjectMode {
            id: id.clone(),
            mode: mode.parse().map_err(anyhow::Error::msg)?,
        },
        ProjectCommand::Route {
            id,
            upstream,
            fallbacks,
            clear,
        } => AdminRequest::ProjectRoute {
            id: id.clone(),
            upstream: upstream.clone(),
            fallbacks: fallbacks.clone(),
            clear: *clear,
        },
    };
    let creates_token = matches!(
        cmd,
        ProjectCommand::Add { .. }
            | ProjectCommand::Token {
                command: TokenCommand::Add { .. }
            }
    );
    let mut v = admin(cli, &config, req)?;
    if creates_token {
        v["smtp"] = smtp_settings(&config, &v);
    }
    if matches!(cmd, ProjectCommand::Add { .. }) {
        // Which database got the project: a relative state_dir depends on where the CLI ran.
        v["state_dir"] = json!(super::state_dir_shown(&config).display().to_string());
    }
    if cli.json {
        print_json(&v);
        return Ok(());
    }
    match cmd {
        ProjectCommand::List => {
            let list = v.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!(
                    "no projects; create one with: smtp-relay project add myapp --domain example.com"
                );
            }
            for p in list {
                println!(
                    "{}  {:<24} {:<8} tokens={}  domains={}",
                    p["id"].as_str().unwrap_or(""),
                    p["name"].as_str().unwrap_or(""),
                    if p["enabled"].as_bool() == Some(true) {
                        "enabled"
                    } else {
                        "DISABLED"
                    },
                    p["tokens"].as_array().map(Vec::len).unwrap_or(0),
                    join(&p["domains"]),
                );
            }
        }
        _ if creates_token => print_new_token(&v),
        ProjectCommand::Branding(args) if args.preview => {
            print!("{}", v["message"].as_str().unwrap_or(""))
        }
        ProjectCommand::Mode { .. } => println!(
            "project {} is now in {} mode",
            v["id"].as_str().unwrap_or(""),
            v["mode"].as_str().unwrap_or("")
        ),
        ProjectCommand::Branding(args) => print_branding(&args.id, &v),
        ProjectCommand::Route { .. } => {
            let mut order = vec![v["upstream"].as_str().unwrap_or("").to_string()];
            order.extend(
                v["fallbacks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_string),
            );
            println!(
                "project {} → {}{}",
                v["project"].as_str().unwrap_or(""),
                order.join(" → "),
                if v["default"].as_bool() == Some(true) {
                    "  (the config's default route)"
                } else {
                    ""
                }
            );
        }
        _ => print_project(&v),
    }
    Ok(())
}

fn join(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn print_project(p: &Value) {
    println!("project   {}", p["id"].as_str().unwrap_or(""));
    println!("name      {}", p["name"].as_str().unwrap_or(""));
    println!(
        "state     {}",
        if p["enabled"].as_bool() == Some(true) {
            "enabled"
        } else {
            "disabled"
        }
    );
    println!("domains   {}", join(&p["domains"]));
    if let Some(age) = p["max_age_secs"].as_u64() {
        println!("max age   {age} s");
    }
    println!("sender    {}", sender_policy(p));
    println!(
        "bounces   {}",
        if p["bounces"].as_bool() == Some(true) {
            "on (a DSN to the envelope sender when a message finally fails)"
        } else {
            "off"
        }
    );
    println!("created   {}", fmt_time(p["created"].as_u64().unwrap_or(0)));
    println!("branding  {}", branding_summary(&p["branding"]));
    if p.get("limits").is_some() {
        super::limits::print(&p["limits"]);
    }
    println!("tokens");
    for t in p["tokens"].as_array().cloned().unwrap_or_default() {
        println!(
            "  {}  {:<12} created {}",
            t["id"].as_str().unwrap_or(""),
            t["label"].as_str().unwrap_or(""),
            fmt_time(t["created"].as_u64().unwrap_or(0))
        );
    }
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("expected on or off, not {s:?}")),
    }
}

fn sender_policy(p: &Value) -> &'static str {
    if p["allow_foreign_sender"].as_bool() == Some(true) {
        "Sender/Resent-Sender may name any address (allow-foreign-sender on)"
    } else {
        "Sender/Resent-Sender/Resent-From must be in the project's domains"
    }
}

/// One line: on/off, name, logo, contacts.
fn branding_summary(b: &Value) -> String {
    if b.is_null() {
        return "not set up (smtp-relay project branding <id> --display-name …)".into();
    }
    let logo = match (&b["logo"], b["logo_url"].as_str()) {
        (l, _) if !l.is_null() => format!(
            "logo {} {} bytes{}",
            l["content_type"].as_str().unwrap_or(""),
            l["bytes"].as_u64().unwrap_or(0),
            match (l["width"].as_u64(), l["height"].as_u64()) {
                (Some(w), Some(h)) => format!(" {w}x{h}"),
                _ => String::new(),
            }
        ),
        (_, Some(url)) => format!("logo {url}"),
        _ => "no logo".into(),
    };
    let contacts = [&b["contact_email"], &b["contact_phone"]]
        .iter()
        .filter_map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{} — {}; {}{}",
        if b["enabled"].as_bool() == Some(true) {
            "on"
        } else {
            "OFF"
        },
        b["display_name"].as_str().unwrap_or(""),
        logo,
        if contacts.is_empty() {
            String::new()
        } else {
            format!("; {contacts}")
        },
    )
}

fn print_branding(id: &str, b: &Value) {
    println!("project   {id}");
    println!("branding  {}", branding_summary(b));
    if !b.is_null() {
        println!(
            "templates header {}, footer {}, text footer {}",
            b["header_template"].as_str().unwrap_or(""),
            b["footer_template"].as_str().unwrap_or(""),
            b["text_footer"].as_str().unwrap_or("")
        );
    }
}

fn print_new_token(v: &Value) {
    let p = &v["project"];
    println!(
        "project   {} ({})",
        p["id"].as_str().unwrap_or(""),
        p["name"].as_str().unwrap_or("")
    );
    println!("domains   {}", join(&p["domains"]));
    println!("token id  {}", v["token_id"].as_str().unwrap_or(""));
    if let Some(dir) = v["state_dir"].as_str() {
        println!("state dir {dir}");
    }
    println!();
    println!("The token is shown only now. Store it in your app's secret store.");
    println!();
    let s = &v["smtp"];
    println!("SMTP settings:");
    println!("  host      {}", s["host"].as_str().unwrap_or(""));
    if let Some(port) = s["port_starttls"].as_u64() {
        println!("  port      {port}  (STARTTLS; secure=false in nodemailer)");
    }
    if let Some(port) = s["port_implicit_tls"].as_u64() {
        println!("  port      {port}  (implicit TLS; secure=true in nodemailer)");
    }
    println!("  username  {}", s["username"].as_str().unwrap_or(""));
    println!("  password  {}", s["password"].as_str().unwrap_or(""));
}

/// Ready-to-paste settings for the app that will use this token.
fn smtp_settings(config: &Config, v: &Value) -> Value {
    let port = |mode| {
        config
            .listeners
            .iter()
            .find(|l| l.mode == mode)
            .map(|l| l.address.port())
    };
    json!({
        "host": config.server.hostname,
        "port_starttls": port(ListenerMode::Starttls),
        "port_implicit_tls": port(ListenerMode::Implicit),
        "username": v["project"]["id"],
        "password": v["token"],
    })
}
