//! Drives added to and removed from a running VM.
//!
//! virtio-mmio has no hotplug: the guest finds its devices once, on the kernel command
//! line. A VM that must take drives later is therefore built with spare drive slots,
//! virtio-blk devices with no media, and a [`DriveHandle`] puts media into them and takes
//! media out while the guest runs. The guest sees a disk whose capacity changes from 0
//! (Linux prints "detected capacity change") and whose serial becomes the drive's id.
//!
//! The handle works on the devices under their own locks, which the event loop holds
//! while it serves a device's queue: a media change falls between two requests. Backing
//! files are opened and closed outside those locks.

use std::sync::{Arc, Mutex, MutexGuard};

use husk_devices::virtio::block::{Block, BlockConfig, BlockError, BlockMedia, ID_LEN};

use crate::config::DriveConfig;

/// Why a drive cannot be attached or detached.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum DriveError {
    /// the VM has no spare drive slots (it was built without any)
    NoSpareSlots,
    /// no free drive slot: all {0} spare slots hold drives
    NoFreeSlot(usize),
    /// a drive attached to a running VM needs an id (its serial): the guest finds it and the caller detaches it by that id
    NoId,
    /// the drive id {0:?} is longer than 20 bytes
    IdTooLong(String),
    /// a drive with the id {0:?} is already in the VM
    DuplicateId(String),
    /// no attached drive has the id {0:?}
    UnknownId(String),
    /// the drive {0:?} was given when the VM was built: only drives attached later can be detached
    BootDrive(String),
    /// cannot attach the drive {0}: {1}
    Open(String, BlockError),
}

/// Attaches drives to and detaches them from a VM's spare slots, from any thread, before
/// or while the VM runs. Cheap to clone; every clone works on the same slots.
#[derive(Clone)]
pub struct DriveHandle(Arc<Slots>);

struct Slots {
    devices: Vec<Arc<Mutex<Block>>>,
    /// Its lock also makes attach and detach calls one at a time, so two callers never
    /// pick the same slot.
    table: Mutex<Table>,
    /// Ids of the drives the VM was built with: never detachable, never reused.
    boot_ids: Vec<String>,
}

/// What the lock on [`Slots::table`] guards.
struct Table {
    /// The id of the drive in each slot.
    ids: Vec<Option<String>>,
    /// Where the search for a free slot starts: slots are taken in turn, so that the
    /// slot a drive just left is the last one to take another. A guest still holding
    /// the old disk open (a lazy unmount, say) then has time to let go of it before
    /// the same device shows other contents.
    next: usize,
}

impl DriveHandle {
    pub(crate) fn new(devices: Vec<Arc<Mutex<Block>>>, boot_ids: Vec<String>) -> Self {
        let table = Mutex::new(Table {
            ids: vec![None; devices.len()],
            next: 0,
        });
        DriveHandle(Arc::new(Slots {
            devices,
            table,
            boot_ids,
        }))
    }

    /// How many spare slots the VM has.
    pub fn slots(&self) -> usize {
        self.0.devices.len()
    }

    /// How many of them are free.
    pub fn free_slots(&self) -> usize {
        self.table().ids.iter().filter(|id| id.is_none()).count()
    }

    /// Puts `drive` into a free spare slot. The guest sees the new capacity and serial at
    /// once (a configuration-change interrupt). Read-only drives refuse writes and
    /// flushes with an I/O error, but the guest cannot know they are read-only (the
    /// slot's features were fixed at boot): it must mount them read-only itself.
    pub fn attach(&self, drive: DriveConfig) -> Result<(), DriveError> {
        let id = match drive.id.as_deref() {
            None | Some("") => return Err(DriveError::NoId),
            Some(id) if id.len() > ID_LEN => return Err(DriveError::IdTooLong(id.to_owned())),
            Some(id) => id.to_owned(),
        };
        if self.0.devices.is_empty() {
            return Err(DriveError::NoSpareSlots);
        }
        let mut table = self.table();
        if self.0.boot_ids.contains(&id) || table.ids.iter().flatten().any(|i| *i == id) {
            return Err(DriveError::DuplicateId(id));
        }
        let count = table.ids.len();
        let Some(slot) = (0..count)
            .map(|i| (table.next + i) % count)
            .find(|&slot| table.ids[slot].is_none())
        else {
            return Err(DriveError::NoFreeSlot(count));
        };
        let path = drive.path.display().to_string();
        let media = BlockMedia::open(BlockConfig {
            path: drive.path,
            read_only: drive.read_only,
            serial: Some(id.clone()),
        })
        .map_err(|e| DriveError::Open(path.clone(), e))?;
        let capacity = media.capacity();
        lock(&self.0.devices[slot])
            .insert_media(media)
            .map_err(|e| DriveError::Open(path.clone(), e))?;
        log::info!(
            "drive {id:?} ({path}, {capacity} sectors{}) attached to spare slot {slot}",
            if drive.read_only { ", read-only" } else { "" }
        );
        table.ids[slot] = Some(id);
        table.next = (slot + 1) % count;
        Ok(())
    }

    /// Takes the drive with this id out of its slot, which reads as empty again (the
    /// guest sees capacity 0) and can take another drive. Whatever the guest still
    /// sends to it fails with an I/O error: unmount it in the guest first.
    pub fn detach(&self, id: &str) -> Result<(), DriveError> {
        let mut table = self.table();
        let Some(slot) = table.ids.iter().position(|i| i.as_deref() == Some(id)) else {
            if self.0.boot_ids.iter().any(|i| i == id) {
                return Err(DriveError::BootDrive(id.to_owned()));
            }
            return Err(DriveError::UnknownId(id.to_owned()));
        };
        let media = lock(&self.0.devices[slot]).remove_media();
        table.ids[slot] = None;
        drop(table);
        // Closing the file (and releasing its lock) outside every lock.
        drop(media);
        log::info!("drive {id:?} detached from spare slot {slot}");
        Ok(())
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // Updated after the device changed, one field at a time, none depending on the
        // other: a poisoned lock still guards a usable table.
        self.0.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A device whose lock was poisoned is still consistent: media change in one assignment.
fn lock(device: &Mutex<Block>) -> MutexGuard<'_, Block> {
    device.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A small backing file under the temporary directory, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(tag: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("husk-vmm-drives-{}-{tag}", std::process::id()));
            std::fs::write(&path, vec![0u8; 4096]).expect("creating a backing file");
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn drive(file: &TempFile, id: Option<&str>) -> DriveConfig {
        DriveConfig {
            path: file.0.clone(),
            read_only: true,
            id: id.map(str::to_owned),
        }
    }

    fn handle(slots: usize, boot_ids: &[&str]) -> (DriveHandle, Vec<Arc<Mutex<Block>>>) {
        let devices: Vec<_> = (0..slots)
            .map(|_| Arc::new(Mutex::new(Block::empty().expect("a spare slot"))))
            .collect();
        let boot = boot_ids.iter().map(|s| s.to_string()).collect();
        (DriveHandle::new(devices.clone(), boot), devices)
    }

    fn ids(devices: &[Arc<Mutex<Block>>]) -> Vec<Option<String>> {
        devices
            .iter()
            .map(|d| lock(d).media_id().map(str::to_owned))
            .collect()
    }

    #[test]
    fn attach_fills_free_slots_in_turn_and_detach_empties_them() {
        let file = TempFile::new("turns");
        let (handle, devices) = handle(2, &["boot"]);
        assert_eq!((handle.slots(), handle.free_slots()), (2, 2));
        handle.attach(drive(&file, Some("a"))).expect("a");
        handle.attach(drive(&file, Some("b"))).expect("b");
        assert_eq!(ids(&devices), [Some("a".into()), Some("b".into())]);
        assert_eq!(lock(&devices[0]).capacity(), 8);
        assert!(matches!(
            handle.attach(drive(&file, Some("c"))),
            Err(DriveError::NoFreeSlot(2))
        ));
        handle.detach("a").expect("detach a");
        assert_eq!(handle.free_slots(), 1);
        assert_eq!(ids(&devices), [None, Some("b".into())]);
        assert_eq!(lock(&devices[0]).capacity(), 0);
        // The freed slot is taken again, and an id may come back once it has left.
        handle.attach(drive(&file, Some("a"))).expect("a again");
        assert_eq!(ids(&devices), [Some("a".into()), Some("b".into())]);
        handle.detach("b").expect("detach b");
        handle.detach("a").expect("detach a");
        // Slots are taken in turn: after slot 0, slot 1 comes first.
        handle.attach(drive(&file, Some("d"))).expect("d");
        assert_eq!(ids(&devices), [None, Some("d".into())]);
        // Clones share the slots.
        let other = handle.clone();
        other.detach("d").expect("detach through a clone");
        assert_eq!(handle.free_slots(), 2);
    }

    #[test]
    fn bad_requests_are_refused_with_the_slots_unchanged() {
        let file = TempFile::new("bad");
        let (handle, devices) = handle(2, &["boot"]);
        handle.attach(drive(&file, Some("a"))).expect("a");
        for (config, want) in [
            (drive(&file, None), "needs an id"),
            (drive(&file, Some("")), "needs an id"),
            (drive(&file, Some(&"x".repeat(21))), "longer than 20 bytes"),
            (drive(&file, Some("a")), "already in the VM"),
            (drive(&file, Some("boot")), "already in the VM"),
            (
                DriveConfig {
                    path: file.0.with_extension("missing"),
                    read_only: true,
                    id: Some("m".into()),
                },
                "cannot attach the drive",
            ),
        ] {
            let err = handle.attach(config).expect_err(want).to_string();
            assert!(err.contains(want), "{err}");
        }
        // A writable drive on a file a reader holds: flock says no.
        let err = handle
            .attach(DriveConfig {
                read_only: false,
                ..drive(&file, Some("w"))
            })
            .expect_err("a locked file")
            .to_string();
        assert!(err.contains("in use by another process"), "{err}");
        assert_eq!(ids(&devices), [Some("a".into()), None]);

        for (id, want) in [("nope", "no attached drive"), ("boot", "given when the VM")] {
            let err = handle.detach(id).expect_err(want).to_string();
            assert!(err.contains(want), "{err}");
        }
        assert_eq!(ids(&devices), [Some("a".into()), None]);

        let (none, _) = self::handle(0, &[]);
        assert!(matches!(
            none.attach(drive(&file, Some("a"))),
            Err(DriveError::NoSpareSlots)
        ));
    }
}
