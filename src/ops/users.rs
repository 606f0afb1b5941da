//! User names of uids, as the events name file owners and journal writers:
//! looked up through the system (getpwuid_r, so NSS: /etc/passwd, LDAP,
//! sssd), once per uid.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ffi::CStr;

/// The name of user `uid`, or the number when the system knows no name.
pub fn user_name(uid: u32) -> String {
    lookup_user(uid)
        .flatten()
        .unwrap_or_else(|| uid.to_string())
}

/// The name of `uid`: Some(None) when the system has no such user, None
/// when it could not say (an NSS service down): worth asking again.
fn lookup_user(uid: u32) -> Option<Option<String>> {
    let mut size = 1024usize;
    loop {
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buf = vec![0u8; size];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: getpwuid_r fills `pwd` with pointers into `buf`, which
        // lives until the name is copied out; `result` is null when there
        // is no entry.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        match rc {
            0 if result.is_null() || pwd.pw_name.is_null() => return Some(None),
            0 => {
                // SAFETY: pw_name points to a NUL-terminated string in `buf`.
                let name = unsafe { CStr::from_ptr(pwd.pw_name) };
                return Some(name.to_str().ok().map(str::to_string));
            }
            libc::EINTR => continue,
            libc::ERANGE if size < 1 << 20 => size *= 2,
            _ => return None,
        }
    }
}

/// User names by uid, each looked up once (a lookup may read /etc/passwd
/// or ask NSS over the network). A lookup that failed (an NSS service
/// down) gives the number and is tried again after [`UserNames::RETRY`],
/// not at every record. Bounded: emptied when it holds [`UserNames::MAX`]
/// uids.
#[derive(Debug, Default)]
pub struct UserNames {
    names: HashMap<u32, String>,
    failed: HashMap<u32, std::time::Instant>,
}

impl UserNames {
    pub const MAX: usize = 4096;
    pub const RETRY: std::time::Duration = std::time::Duration::from_secs(60);

    /// The name of `uid`, or the number when the system knows no name.
    pub fn name(&mut self, uid: u32) -> Cow<'_, str> {
        if !self.names.contains_key(&uid) {
            if self
                .failed
                .get(&uid)
                .is_some_and(|at| at.elapsed() < Self::RETRY)
            {
                return Cow::Owned(uid.to_string());
            }
            let Some(found) = lookup_user(uid) else {
                if self.failed.len() >= Self::MAX {
                    self.failed.clear();
                }
                self.failed.insert(uid, std::time::Instant::now());
                return Cow::Owned(uid.to_string());
            };
            self.failed.remove(&uid);
            if self.names.len() >= Self::MAX {
                self.names.clear();
            }
            self.names
                .insert(uid, found.unwrap_or_else(|| uid.to_string()));
        }
        match self.names.get(&uid) {
            Some(name) => Cow::Borrowed(name),
            None => Cow::Owned(uid.to_string()),
        }
    }
}
