//! A project's branding settings: what the admin set, how it is checked, where it is stored
//! (the sled tree `branding`, keyed by project id) and the prepared form DATA uses.
//!
//! Everything an admin sends is validated here, on the server side, whatever the client: the
//! logo by its content (PNG, JPEG or GIF magic bytes; SVG refused because mail clients block it
//! and it can carry script), sizes, the contact fields, and the templates' placeholders.
//! Sessions read the settings per message, so a change applies to the next message without a
//! restart; the prepared form is cached and rebuilt only when the stored bytes change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Branding;
use super::encoding::base64_lines;
use super::template::{self, Template, UnknownPlaceholder, Values};
use crate::store::{Store, StoreError};

/// Largest logo accepted.
pub const MAX_LOGO_BYTES: usize = 200 * 1024;
/// Largest header or footer template accepted.
pub const MAX_TEMPLATE_BYTES: usize = 64 * 1024;
/// Largest text footer accepted.
pub const MAX_TEXT_FOOTER_BYTES: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("logo is {0} bytes; the limit is {MAX_LOGO_BYTES} bytes (200 KiB)")]
    LogoTooLarge(usize),
    #[error(
        "SVG logos are refused: mail clients block SVG and it can carry script; use PNG, JPEG or GIF"
    )]
    LogoSvg,
    #[error("logo is not a PNG, JPEG or GIF image (checked by content, not by file name)")]
    LogoNotImage,
    #[error("give either a logo file or a logo URL, not both")]
    LogoConflict,
    #[error("--display-name is required when branding is first set up")]
    DisplayNameRequired,
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{field}: {source}")]
    Template {
        field: &'static str,
        source: UnknownPlaceholder,
    },
    #[error("stored branding of project {0} is corrupt: {1}")]
    Corrupt(String, String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sled::Error> for SettingsError {
    fn from(e: sled::Error) -> Self {
        SettingsError::Store(StoreError::Sled(e))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Logo {
    /// `image/png`, `image/jpeg` or `image/gif`, from the content.
    pub content_type: String,
    #[serde(with = "b64")]
    pub data: Vec<u8>,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct BrandingSettings {
    pub enabled: bool,
    pub display_name: String,
    #[serde(default)]
    pub contact_email: Option<String>,
    #[serde(default)]
    pub contact_phone: Option<String>,
    #[serde(default)]
    pub logo: Option<Logo>,
    #[serde(default)]
    pub logo_url: Option<String>,
    #[serde(default)]
    pub header_template: Option<String>,
    #[serde(default)]
    pub footer_template: Option<String>,
    #[serde(default)]
    pub text_footer: Option<String>,
    pub updated: u64,
}

/// A change requested by an admin. Unset fields stay as they are; an empty string clears an
/// optional field. Every update turns branding on (an empty one just turns it on), unless
/// `off` is set.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct BrandingUpdate {
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub contact_email: Option<String>,
    #[serde(default)]
    pub contact_phone: Option<String>,
    /// The logo file's bytes.
    #[serde(default, with = "opt_b64")]
    pub logo: Option<Vec<u8>>,
    #[serde(default)]
    pub logo_url: Option<String>,
    /// Remove the logo (file and URL).
    #[serde(default)]
    pub no_logo: bool,
    #[serde(default)]
    pub header_template: Option<String>,
    #[serde(default)]
    pub footer_template: Option<String>,
    #[serde(default)]
    pub text_footer: Option<String>,
    /// Go back to the built-in header, footer and text footer.
    #[serde(default)]
    pub default_templates: bool,
    /// Turn branding off (the settings are kept; any later change turns it on again).
    #[serde(default)]
    pub off: bool,
}

impl BrandingSettings {
    /// Applies `u` on top of `current` (None: nothing stored yet), validating everything.
    pub fn updated(
        current: Option<BrandingSettings>,
        u: BrandingUpdate,
        now: u64,
    ) -> Result<BrandingSettings, SettingsError> {
        let first_time = current.is_none();
        let mut s = current.unwrap_or_default();
        if let Some(name) = u.display_name {
            s.display_name = check_text("display name", &name, 100)?;
        }
        if first_time && s.display_name.is_empty() && !u.off {
            return Err(SettingsError::DisplayNameRequired);
        }
        if let Some(email) = u.contact_email {
            s.contact_email = optional(&email).map(check_email).transpose()?;
        }
        if let Some(phone) = u.contact_phone {
            s.contact_phone = optional(&phone)
                .map(|p| check_text("contact phone", p, 40))
                .transpose()?;
        }
        if u.logo.is_some() && u.logo_url.as_deref().is_some_and(|x| !x.is_empty()) {
            return Err(SettingsError::LogoConflict);
        }
        if u.no_logo {
            s.logo = None;
            s.logo_url = None;
        }
        if let Some(data) = u.logo {
            s.logo = Some(check_logo(data)?);
            s.logo_url = None;
        }
        if let Some(url) = u.logo_url {
            s.logo_url = optional(&url).map(check_url).transpose()?;
            if s.logo_url.is_some() {
                s.logo = None;
            }
        }
        if u.default_templates {
            s.header_template = None;
            s.footer_template = None;
            s.text_footer = None;
        }
        for (field, new, slot, max) in [
            (
                "header template",
                u.header_template,
                &mut s.header_template,
                MAX_TEMPLATE_BYTES,
            ),
            (
                "footer template",
                u.footer_template,
                &mut s.footer_template,
                MAX_TEMPLATE_BYTES,
            ),
            (
                "text footer",
                u.text_footer,
                &mut s.text_footer,
                MAX_TEXT_FOOTER_BYTES,
            ),
        ] {
            if let Some(t) = new {
                *slot = optional(&t)
                    .map(|t| check_template(field, t, max))
                    .transpose()?;
            }
        }
        s.enabled = !u.off;
        s.updated = now;
        Ok(s)
    }

    /// What admins see: everything but the logo's bytes.
    pub fn to_json(&self) -> Value {
        let custom = |t: &Option<String>| if t.is_some() { "custom" } else { "built-in" };
        json!({
            "enabled": self.enabled,
            "display_name": self.display_name,
            "contact_email": self.contact_email,
            "contact_phone": self.contact_phone,
            "logo": self.logo.as_ref().map(|l| json!({
                "content_type": l.content_type,
                "bytes": l.data.len(),
                "width": l.width,
                "height": l.height,
            })),
            "logo_url": self.logo_url,
            "header_template": custom(&self.header_template),
            "footer_template": custom(&self.footer_template),
            "text_footer": custom(&self.text_footer),
            "updated": self.updated,
        })
    }
}

fn optional(s: &str) -> Option<&str> {
    let t = s.trim();
    (!t.is_empty()).then_some(t)
}

fn invalid(field: &'static str, reason: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// One line of printable text.
fn check_text(field: &'static str, s: &str, max_chars: usize) -> Result<String, SettingsError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if s.chars().count() > max_chars {
        return Err(invalid(
            field,
            format!("longer than {max_chars} characters"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid(field, "contains control characters"));
    }
    Ok(s.to_string())
}

fn check_email(s: &str) -> Result<String, SettingsError> {
    let field = "contact email";
    let ok = s.len() <= 254
        && s.split('@').count() == 2
        && s.split('@').all(|p| !p.is_empty())
        && s.chars()
            .all(|c| c.is_alphanumeric() || ".!#$%&'*+/=?^_`{|}~-@".contains(c) && !c.is_control())
        && s.rsplit('@').next().is_some_and(|d| d.contains('.'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(invalid(
            field,
            format!("{s:?} is not an address such as help@example.com"),
        ))
    }
}

fn check_url(s: &str) -> Result<String, SettingsError> {
    let ok = s.len() <= 2048
        && s.len() > "https://".len()
        && s[..8].eq_ignore_ascii_case("https://")
        && s.chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '<' | '>' | '\\' | '`'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(invalid(
            "logo URL",
            "must be an https:// URL without spaces or quotes (mail clients block plain http images)",
        ))
    }
}

fn check_template(field: &'static str, t: &str, max: usize) -> Result<String, SettingsError> {
    if t.len() > max {
        return Err(invalid(field, format!("larger than {max} bytes")));
    }
    if t.chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\r' | '\n'))
    {
        return Err(invalid(field, "contains control characters"));
    }
    Template::parse(t).map_err(|source| SettingsError::Template { field, source })?;
    Ok(t.to_string())
}

/// Checks a logo by its content and reads its size.
pub fn check_logo(data: Vec<u8>) -> Result<Logo, SettingsError> {
    if data.len() > MAX_LOGO_BYTES {
        return Err(SettingsError::LogoTooLarge(data.len()));
    }
    let (content_type, dims) = if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        if data.len() < 24 || &data[12..16] != b"IHDR" {
            return Err(SettingsError::LogoNotImage);
        }
        let be = |i: usize| u32::from_be_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
        ("image/png", Some((be(16), be(20))))
    } else if data.starts_with(b"GIF87a") || data.starts_with(b"GIF89a") {
        if data.len() < 10 {
            return Err(SettingsError::LogoNotImage);
        }
        let le = |i: usize| u16::from_le_bytes([data[i], data[i + 1]]) as u32;
        ("image/gif", Some((le(6), le(8))))
    } else if data.starts_with(&[0xFF, 0xD8, 0xFF]) {
        ("image/jpeg", jpeg_size(&data))
    } else if looks_like_svg(&data) {
        return Err(SettingsError::LogoSvg);
    } else {
        return Err(SettingsError::LogoNotImage);
    };
    Ok(Logo {
        content_type: content_type.into(),
        width: dims.map(|d| d.0),
        height: dims.map(|d| d.1),
        data,
    })
}

fn looks_like_svg(data: &[u8]) -> bool {
    let head = String::from_utf8_lossy(&data[..data.len().min(4096)]).to_ascii_lowercase();
    let t = head.trim_start_matches('\u{feff}').trim_start();
    t.starts_with("<?xml")
        || t.starts_with("<svg")
        || t.starts_with("<!doctype svg")
        || head.contains("<svg")
}

/// Width and height from a JPEG's first start-of-frame marker.
fn jpeg_size(d: &[u8]) -> Option<(u32, u32)> {
    let mut i = 2;
    while i + 9 < d.len() {
        if d[i] != 0xFF {
            return None;
        }
        let marker = d[i + 1];
        if marker == 0xFF {
            i += 1;
            continue;
        }
        let len = u16::from_be_bytes([d[i + 2], d[i + 3]]) as usize;
        let is_sof = (0xC0..=0xCF).contains(&marker) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof {
            let h = u16::from_be_bytes([d[i + 5], d[i + 6]]) as u32;
            let w = u16::from_be_bytes([d[i + 7], d[i + 8]]) as u32;
            return Some((w, h));
        }
        if len < 2 {
            return None;
        }
        i += 2 + len;
    }
    None
}

/// The logo as it goes into messages: base64 body lines ready to splice.
#[derive(Debug)]
pub struct PreparedLogo {
    pub content_type: String,
    pub filename: &'static str,
    pub base64: Vec<u8>,
}

impl Branding {
    /// Builds the form DATA uses from stored settings.
    pub fn prepare(project: &str, s: &BrandingSettings) -> Result<Branding, SettingsError> {
        let has_email = s.contact_email.is_some();
        let has_phone = s.contact_phone.is_some();
        let parse = |field: &'static str, custom: &Option<String>, builtin: String| {
            Template::parse(custom.as_deref().unwrap_or(&builtin))
                .map_err(|source| SettingsError::Template { field, source })
        };
        Ok(Branding {
            project: project.to_string(),
            values: Values {
                display_name: s.display_name.clone(),
                contact_email: s.contact_email.clone().unwrap_or_default(),
                contact_phone: s.contact_phone.clone().unwrap_or_default(),
                logo_width: s.logo.as_ref().and_then(|l| l.width),
            },
            header: parse(
                "header template",
                &s.header_template,
                template::builtin_header(),
            )?,
            footer: parse(
                "footer template",
                &s.footer_template,
                template::builtin_footer(has_email, has_phone),
            )?,
            text_footer: parse(
                "text footer",
                &s.text_footer,
                template::builtin_text_footer(has_email, has_phone),
            )?,
            logo: s.logo.as_ref().map(|l| PreparedLogo {
                filename: match l.content_type.as_str() {
                    "image/png" => "logo.png",
                    "image/gif" => "logo.gif",
                    _ => "logo.jpg",
                },
                content_type: l.content_type.clone(),
                base64: base64_lines(&l.data),
            }),
            logo_url: s.logo_url.clone(),
        })
    }
}

type Cache = HashMap<String, (sled::IVec, Arc<Branding>)>;

/// The `branding` tree, plus a cache of prepared branding keyed by the stored bytes.
#[derive(Clone)]
pub struct BrandingStore {
    store: Store,
    cache: Arc<Mutex<Cache>>,
}

impl std::fmt::Debug for BrandingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrandingStore").finish_non_exhaustive()
    }
}

impl BrandingStore {
    pub fn new(store: Store) -> BrandingStore {
        BrandingStore {
            store,
            cache: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn get(&self, project: &str) -> Result<Option<BrandingSettings>, SettingsError> {
        match self.store.branding.get(project.as_bytes())? {
            Some(v) => decode(project, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Validates and stores a change; returns the new settings.
    pub fn update(
        &self,
        project: &str,
        u: BrandingUpdate,
    ) -> Result<BrandingSettings, SettingsError> {
        let s = BrandingSettings::updated(self.get(project)?, u, crate::now_secs())?;
        let bytes = serde_json::to_vec(&s)
            .map_err(|e| SettingsError::Corrupt(project.into(), e.to_string()))?;
        self.store.branding.insert(project.as_bytes(), bytes)?;
        self.store.flush_now()?;
        Ok(s)
    }

    /// The branding to apply to a project's next message, if it is on.
    pub fn active(&self, project: &str) -> Result<Option<Arc<Branding>>, SettingsError> {
        let Some(raw) = self.store.branding.get(project.as_bytes())? else {
            return Ok(None);
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((bytes, prepared)) = cache.get(project)
            && *bytes == raw
        {
            return Ok(Some(prepared.clone()));
        }
        let settings = decode(project, &raw)?;
        if !settings.enabled {
            cache.remove(project);
            return Ok(None);
        }
        let prepared = Arc::new(Branding::prepare(project, &settings)?);
        cache.insert(project.to_string(), (raw, prepared.clone()));
        Ok(Some(prepared))
    }
}

fn decode(project: &str, bytes: &[u8]) -> Result<BrandingSettings, SettingsError> {
    serde_json::from_slice(bytes).map_err(|e| SettingsError::Corrupt(project.into(), e.to_string()))
}

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

mod opt_b64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => super::b64::serialize(v, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map(Some)
                    .map_err(serde::de::Error::custom)
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn png(w: u32, h: u32) -> Vec<u8> {
        let mut d = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        d.extend_from_slice(&w.to_be_bytes());
        d.extend_from_slice(&h.to_be_bytes());
        d.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
        d
    }

    #[test]
    fn logos_are_checked_by_content() {
        let l = check_logo(png(320, 80)).unwrap();
        assert_eq!(
            (l.content_type.as_str(), l.width, l.height),
            ("image/png", Some(320), Some(80))
        );
        let gif = check_logo(b"GIF89a\x10\x00\x20\x00rest".to_vec()).unwrap();
        assert_eq!((gif.width, gif.height), (Some(16), Some(32)));
        let jpeg = [
            &[0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0x4A, 0x46][..],
            &[0xFF, 0xC0, 0x00, 0x11, 0x08, 0x00, 0x30, 0x00, 0x40, 0x03][..],
        ]
        .concat();
        let j = check_logo(jpeg).unwrap();
        assert_eq!(
            (j.content_type.as_str(), j.width, j.height),
            ("image/jpeg", Some(64), Some(48))
        );
        assert!(matches!(
            check_logo(
                b"<?xml version=\"1.0\"?><svg xmlns=\"http://www.w3.org/2000/svg\"/>".to_vec()
            ),
            Err(SettingsError::LogoSvg)
        ));
        assert!(matches!(
            check_logo(b"  <svg onload=alert(1)>".to_vec()),
            Err(SettingsError::LogoSvg)
        ));
        assert!(matches!(
            check_logo(b"RIFF....WEBP".to_vec()),
            Err(SettingsError::LogoNotImage)
        ));
        assert!(matches!(
            check_logo(b"\x89PNG\r\n\x1a\n".to_vec()),
            Err(SettingsError::LogoNotImage)
        ));
        let mut big = png(1, 1);
        big.resize(MAX_LOGO_BYTES + 1, 0);
        assert!(matches!(
            check_logo(big),
            Err(SettingsError::LogoTooLarge(_))
        ));
    }

    #[test]
    fn updates_merge_validate_and_toggle() {
        let err = BrandingSettings::updated(None, BrandingUpdate::default(), 1).unwrap_err();
        assert!(matches!(err, SettingsError::DisplayNameRequired));
        let s = BrandingSettings::updated(
            None,
            BrandingUpdate {
                display_name: Some(" Acme ".into()),
                contact_email: Some("help@acme.test".into()),
                logo: Some(png(10, 10)),
                ..Default::default()
            },
            1,
        )
        .unwrap();
        assert!(s.enabled && s.display_name == "Acme" && s.logo.is_some());
        let off = BrandingSettings::updated(
            Some(s.clone()),
            BrandingUpdate {
                off: true,
                ..Default::default()
            },
            2,
        )
        .unwrap();
        assert!(!off.enabled && off.logo.is_some());
        let url = BrandingSettings::updated(
            Some(off),
            BrandingUpdate {
                logo_url: Some("https://cdn.acme.test/logo.png".into()),
                contact_email: Some(String::new()),
                ..Default::default()
            },
            3,
        )
        .unwrap();
        assert!(url.enabled && url.logo.is_none() && url.contact_email.is_none());
        for bad in [
            BrandingUpdate {
                logo_url: Some("http://x.test/l.png".into()),
                ..Default::default()
            },
            BrandingUpdate {
                contact_email: Some("not an address".into()),
                ..Default::default()
            },
            BrandingUpdate {
                display_name: Some("a\u{7}b".into()),
                ..Default::default()
            },
            BrandingUpdate {
                header_template: Some("{{logo_uri}}".into()),
                ..Default::default()
            },
            BrandingUpdate {
                logo: Some(png(1, 1)),
                logo_url: Some("https://x.test/l.png".into()),
                ..Default::default()
            },
        ] {
            assert!(
                BrandingSettings::updated(Some(s.clone()), bad.clone(), 4).is_err(),
                "{bad:?}"
            );
        }
        let json = s.to_json();
        assert_eq!(json["logo"]["bytes"], png(10, 10).len());
        assert_eq!(json["header_template"], "built-in");
    }

    #[test]
    fn stored_per_project_cached_and_deleted_with_the_project() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let secret = crate::secret::ServerSecret::load(None, dir.path()).unwrap();
        let registry = crate::policy::projects::Registry::new(store.clone(), secret);
        let (p, _) = registry
            .create("shop", &["shop.test".into()], "t", None)
            .unwrap();
        let brandings = BrandingStore::new(store.clone());
        assert!(brandings.active(&p.id).unwrap().is_none());
        let named = |n: &str| BrandingUpdate {
            display_name: Some(n.into()),
            ..Default::default()
        };
        brandings.update(&p.id, named("Acme")).unwrap();
        let first = brandings.active(&p.id).unwrap().unwrap();
        assert!(Arc::ptr_eq(
            &first,
            &brandings.active(&p.id).unwrap().unwrap()
        ));
        brandings.update(&p.id, named("Acme 2")).unwrap();
        assert_eq!(
            brandings
                .active(&p.id)
                .unwrap()
                .unwrap()
                .values
                .display_name,
            "Acme 2"
        );
        brandings
            .update(
                &p.id,
                BrandingUpdate {
                    off: true,
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(brandings.active(&p.id).unwrap().is_none());
        registry.delete(&p.id).unwrap();
        assert!(brandings.get(&p.id).unwrap().is_none());
    }
}
