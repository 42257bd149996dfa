//! Optional geolocation and network owner of a relay's address, from MaxMind databases
//! (GeoLite2/GeoIP2 City and ASN `.mmdb` files) when configured.

use super::nip11::note;
use super::nip66::geohash;
use super::MonitorError;
use maxminddb::{geoip2, Reader};
use serde_json::{json, Map, Value};
use std::net::IpAddr;
use std::path::Path;

/// Geohash precision of the `g` tag (9 characters ≈ 5 m, far finer than GeoIP's accuracy,
/// but what the database says is what is published).
const GEOHASH_PRECISION: usize = 9;

/// The opened databases (each optional).
pub(crate) struct GeoDb {
    city: Option<Reader<Vec<u8>>>,
    asn: Option<Reader<Vec<u8>>>,
}

impl std::fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoDb")
            .field("city", &self.city.is_some())
            .field("asn", &self.asn.is_some())
            .finish()
    }
}

impl GeoDb {
    /// Loads the databases into memory; an error names the file.
    pub(crate) fn open(city: Option<&Path>, asn: Option<&Path>) -> Result<GeoDb, MonitorError> {
        let load = |p: Option<&Path>| -> Result<Option<Reader<Vec<u8>>>, MonitorError> {
            p.map(|p| {
                Reader::open_readfile(p).map_err(|source| MonitorError::GeoDb {
                    path: p.to_path_buf(),
                    source,
                })
            })
            .transpose()
        };
        Ok(GeoDb {
            city: load(city)?,
            asn: load(asn)?,
        })
    }

    /// True when at least one database is loaded.
    pub(crate) fn is_enabled(&self) -> bool {
        self.city.is_some() || self.asn.is_some()
    }

    /// What the databases know of `ip`: `ip`, `country`, `country_name`, `continent`, `city`,
    /// `latitude`, `longitude`, `accuracy_radius`, `time_zone`, `geohash`, `asn`, `as_org`,
    /// and `error` for a lookup that failed.
    pub(crate) fn lookup(&self, ip: IpAddr) -> Value {
        let mut out = Map::new();
        out.insert("ip".into(), Value::String(ip.to_string()));
        if let Some(r) = &self.city {
            match r.lookup(ip).and_then(|l| l.decode::<geoip2::City>()) {
                Ok(Some(c)) => {
                    let mut put = |k: &str, v: Option<&str>| {
                        if let Some(v) = v {
                            out.insert(k.into(), Value::String(note(v)));
                        }
                    };
                    put("country", c.country.iso_code);
                    put("country_name", c.country.names.english);
                    put("continent", c.continent.code);
                    put("city", c.city.names.english);
                    put("time_zone", c.location.time_zone);
                    if let Some(r) = c.location.accuracy_radius {
                        out.insert("accuracy_radius".into(), json!(r));
                    }
                    if let (Some(lat), Some(lon)) = (c.location.latitude, c.location.longitude) {
                        if lat.is_finite() && lon.is_finite() {
                            out.insert("latitude".into(), json!(lat));
                            out.insert("longitude".into(), json!(lon));
                            out.insert(
                                "geohash".into(),
                                Value::String(geohash(lat, lon, GEOHASH_PRECISION)),
                            );
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    out.insert("error".into(), Value::String(note(&e.to_string())));
                }
            }
        }
        if let Some(r) = &self.asn {
            match r.lookup(ip).and_then(|l| l.decode::<geoip2::Asn>()) {
                Ok(Some(a)) => {
                    if let Some(n) = a.autonomous_system_number {
                        out.insert("asn".into(), json!(n));
                    }
                    if let Some(o) = a.autonomous_system_organization {
                        out.insert("as_org".into(), Value::String(note(o)));
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    out.insert("asn_error".into(), Value::String(note(&e.to_string())));
                }
            }
        }
        Value::Object(out)
    }
}
