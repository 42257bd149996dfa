//! `[archive]`: what of each event the archive keeps.

use super::check_all;
use bigbrotr_stages::sink::Layout;
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
    /// Maintain the tag index (`event_tags`) that serves NIP-01 tag filters. Off, ingestion
    /// and disk are spared its rows and tag filters scan `events.tags` (slow on a large
    /// archive); turned on again, the index of the events archived meanwhile is rebuilt in the
    /// background, tag filters scanning until it is done.
    pub tag_index: bool,
}

impl Default for Archive {
    fn default() -> Self {
        Archive {
            bodies: true,
            tag_index: true,
        }
    }
}

impl Archive {
    /// Checks the `[archive]` values; errors name `file` and the key.
    pub fn validate(&self, file: &str) -> anyhow::Result<()> {
        check_all(
            file,
            &[(
                self.bodies || self.tag_index,
                "archive.tag_index",
                "must be true when archive.bodies is false: a metadata-only archive keeps its tags only in the tag index",
            )],
        )
    }

    /// The sink's setting.
    pub fn layout(&self) -> Layout {
        Layout {
            bodies: self.bodies,
            tag_index: self.tag_index,
        }
    }
}
