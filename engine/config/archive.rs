//! `[archive]`: what of each event the archive keeps.

use bigbrotr_stages::sink::Keep;
use serde::Deserialize;

/// `[archive]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Archive {
    /// Keep each event whole (`true`), or its metadata only (`false`: id, author, time, kind,
    /// tag-index keys and provenance; `tags`, `content` and `sig` are not stored, every event
    /// is still verified first). Chosen when the archive is created: an archive holding events
    /// refuses to start under the other setting.
    pub bodies: bool,
}

impl Default for Archive {
    fn default() -> Self {
        Archive { bodies: true }
    }
}

impl Archive {
    /// The sink's setting.
    pub fn keep(&self) -> Keep {
        if self.bodies {
            Keep::Bodies
        } else {
            Keep::Metadata
        }
    }
}
