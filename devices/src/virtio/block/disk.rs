//! The backing file of a drive: open, lock, size, and I/O between it and guest memory.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use super::device::BlockError;
use super::SECTOR_SIZE;
use crate::virtio::chain::GuestIoSlices;
use crate::virtio::GuestMemory;

/// At most this many iovecs per `preadv`/`pwritev` call (Linux's `UIO_MAXIOV`).
const MAX_IOVECS: usize = 1024;

pub struct Disk {
    file: File,
    /// Whole sectors in the file; a partial last sector is not visible to the guest.
    capacity: u64,
    read_only: bool,
}

impl Disk {
    /// Opens and locks the backing file of a drive.
    pub fn open(path: &Path, read_only: bool) -> Result<Disk, BlockError> {
        let shown = || path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| BlockError::Open {
            path: shown(),
            source,
        })?;
        let file_type = meta.file_type();
        if !file_type.is_file() && !file_type.is_block_device() {
            return Err(BlockError::NotAFile(shown()));
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: shown(),
                source,
            })?;
        let lock = if read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock on an fd we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), lock | libc::LOCK_NB) } != 0 {
            return Err(BlockError::Locked {
                path: shown(),
                source: io::Error::last_os_error(),
            });
        }
        // The end of a block device is its size too; metadata says 0 for those.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| BlockError::Open {
                path: shown(),
                source,
            })?;
        if !size.is_multiple_of(SECTOR_SIZE) {
            log::warn!(
                "drive {}: its size {size} is not a multiple of {SECTOR_SIZE}; the last {} bytes are not visible to the guest",
                shown(),
                size % SECTOR_SIZE
            );
        }
        Ok(Disk {
            file,
            capacity: size / SECTOR_SIZE,
            read_only,
        })
    }

    /// Size in sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Reads from `sector` into the guest `ranges`.
    pub fn read(&self, mem: &GuestMemory, ranges: &[(u64, usize)], sector: u64) -> io::Result<()> {
        self.transfer(mem, ranges, sector, Direction::Read)
    }

    /// Writes the guest `ranges` to `sector`.
    pub fn write(&self, mem: &GuestMemory, ranges: &[(u64, usize)], sector: u64) -> io::Result<()> {
        self.transfer(mem, ranges, sector, Direction::Write)
    }

    /// Makes every completed write durable.
    pub fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }

    fn transfer(
        &self,
        mem: &GuestMemory,
        ranges: &[(u64, usize)],
        sector: u64,
        direction: Direction,
    ) -> io::Result<()> {
        let slices = GuestIoSlices::new(mem, ranges)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "outside guest memory"))?;
        let mut iovecs = slices.iovecs();
        let mut offset = sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|o| i64::try_from(o).ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset overflows"))?;
        let mut first = 0;
        while first < iovecs.len() {
            let batch = &iovecs[first..iovecs.len().min(first + MAX_IOVECS)];
            let count = batch.len() as libc::c_int;
            let fd = self.file.as_raw_fd();
            // SAFETY: every iovec points into guest memory that `slices` keeps mapped
            // (checked to lie inside it when the request was parsed), and `count` is the
            // number of iovecs in `batch`. The kernel reads or writes only those bytes.
            let done = unsafe {
                match direction {
                    Direction::Read => libc::preadv(fd, batch.as_ptr(), count, offset),
                    Direction::Write => libc::pwritev(fd, batch.as_ptr(), count, offset),
                }
            };
            if done < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if done == 0 {
                // The file shrank under us (or the disk is full on a write).
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    match direction {
                        Direction::Read => "the backing file ended early",
                        Direction::Write => "the backing file took no more data",
                    },
                ));
            }
            offset += done as i64;
            let mut left = done as usize;
            // Skip the iovecs done, and shorten a half-done one.
            while left > 0 && first < iovecs.len() {
                let iov = &mut iovecs[first];
                if left >= iov.iov_len {
                    left -= iov.iov_len;
                    first += 1;
                } else {
                    iov.iov_base = iov.iov_base.cast::<u8>().wrapping_add(left).cast();
                    iov.iov_len -= left;
                    left = 0;
                }
            }
            while first < iovecs.len() && iovecs[first].iov_len == 0 {
                first += 1;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Read,
    Write,
}
