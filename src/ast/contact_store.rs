//! The indexed contact store (`asterisk-headers/contact_store.c`): while res_scale applies the
//! pool's registrations, PJSIP's contacts live in a tree sorted by id instead of sorcery's
//! `memory` wizard, whose 53 fixed hash buckets make every contact change cost more the more
//! contacts a node holds (and every node holds every phone of the pool).

use crate::sys;

/// What [`install`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Installed {
    /// Contacts are in the indexed store.
    Indexed,
    /// sorcery.conf maps contacts to something other than `memory` alone: left as it is.
    LeftAlone,
}

/// Moves the contacts into the indexed store, if they are in `memory` alone.
pub fn install() -> Result<Installed, String> {
    // SAFETY: swaps sorcery wizard mappings of res_pjsip's sorcery; called from the lifecycle
    // thread only, as the shim requires.
    match unsafe { sys::res_scale_contact_store_install() } {
        sys::RES_SCALE_CONTACT_STORE_INSTALLED => Ok(Installed::Indexed),
        sys::RES_SCALE_CONTACT_STORE_NOT_MEMORY => Ok(Installed::LeftAlone),
        _ => Err("sorcery refused to map the indexed contact store; contacts stay in `memory`".into()),
    }
}

/// Moves the contacts back into `memory`; an error means they stay in the indexed store (and
/// the module must stay loaded, or they would go with it).
pub fn uninstall() -> Result<(), String> {
    // SAFETY: as in install.
    match unsafe { sys::res_scale_contact_store_uninstall() } {
        0 => Ok(()),
        _ => Err("sorcery refused to map `memory` for contacts again; they stay in res_scale's store".into()),
    }
}

/// How many contacts the indexed store holds, when it is in place.
pub fn size() -> Option<u64> {
    // SAFETY: reads the count of the installed container (or -1).
    u64::try_from(unsafe { sys::res_scale_contact_store_size() }).ok()
}
