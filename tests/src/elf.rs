//! A minimal ELF64 little-endian reader: the program headers and notes the tests check in
//! test guests, the guest kernel and the agent.

/// XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit PVH entry point.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
pub const PT_LOAD: u32 = 1;
pub const PT_INTERP: u32 = 3;
pub const PT_NOTE: u32 = 4;
pub const EM_X86_64: u16 = 62;
pub const EM_AARCH64: u16 = 183;

/// Bounds-checked little-endian reads from a byte slice.
pub struct Bytes<'a>(pub &'a [u8]);

impl<'a> Bytes<'a> {
    pub fn slice(&self, offset: u64, len: u64) -> Result<&'a [u8], String> {
        let start = usize::try_from(offset).map_err(|_| format!("offset {offset:#x} too large"))?;
        let len = usize::try_from(len).map_err(|_| format!("length {len:#x} too large"))?;
        start
            .checked_add(len)
            .and_then(|end| self.0.get(start..end))
            .ok_or_else(|| {
                format!(
                    "{len} bytes at {start:#x} are past the end of the file ({} bytes)",
                    self.0.len()
                )
            })
    }

    pub fn array<const N: usize>(&self, offset: u64) -> Result<[u8; N], String> {
        let bytes = self.slice(offset, N as u64)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub fn u16(&self, offset: u64) -> Result<u16, String> {
        self.array(offset).map(u16::from_le_bytes)
    }

    pub fn u32(&self, offset: u64) -> Result<u32, String> {
        self.array(offset).map(u32::from_le_bytes)
    }

    pub fn u64(&self, offset: u64) -> Result<u64, String> {
        self.array(offset).map(u64::from_le_bytes)
    }
}

#[derive(Debug)]
pub struct ProgramHeader {
    pub p_type: u32,
    pub offset: u64,
    pub paddr: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub align: u64,
}

/// The program headers of an x86_64 ELF64 little-endian file.
pub fn program_headers(file: &[u8]) -> Result<Vec<ProgramHeader>, String> {
    let b = Bytes(file);
    let ident = b.slice(0, 16)?;
    if &ident[..4] != b"\x7fELF" {
        return Err("not an ELF file (no \\x7fELF magic)".into());
    }
    if ident[4] != 2 || ident[5] != 1 {
        return Err(format!(
            "not ELF64 little-endian (class {}, data {})",
            ident[4], ident[5]
        ));
    }
    let machine = b.u16(18)?;
    if machine != EM_X86_64 {
        return Err(format!("e_machine is {machine}, not x86_64 ({EM_X86_64})"));
    }
    let phoff = b.u64(0x20)?;
    let phentsize = u64::from(b.u16(0x36)?);
    let phnum = u64::from(b.u16(0x38)?);
    if phentsize < 56 {
        return Err(format!("e_phentsize {phentsize} is too small for ELF64"));
    }
    (0..phnum)
        .map(|i| {
            let at = phoff
                .checked_add(i * phentsize)
                .ok_or("program header offset overflows")?;
            Ok(ProgramHeader {
                p_type: b.u32(at)?,
                offset: b.u64(at + 8)?,
                paddr: b.u64(at + 24)?,
                filesz: b.u64(at + 32)?,
                memsz: b.u64(at + 40)?,
                align: b.u64(at + 48)?,
            })
        })
        .collect()
}

pub struct Note {
    pub name: Vec<u8>,
    pub n_type: u32,
    pub desc: Vec<u8>,
}

/// The notes of every PT_NOTE segment (the view a loader has of them).
pub fn notes(file: &[u8], headers: &[ProgramHeader]) -> Result<Vec<Note>, String> {
    let mut notes = Vec::new();
    for ph in headers.iter().filter(|ph| ph.p_type == PT_NOTE) {
        let segment = Bytes(Bytes(file).slice(ph.offset, ph.filesz)?);
        let align = if ph.align == 8 { 8 } else { 4 };
        let pad = |n: u64| n.div_ceil(align) * align;
        let mut at = 0u64;
        while at + 12 <= ph.filesz {
            let namesz = u64::from(segment.u32(at)?);
            let descsz = u64::from(segment.u32(at + 4)?);
            let n_type = segment.u32(at + 8)?;
            let name_at = at + 12;
            let desc_at = pad(name_at + namesz);
            let name = segment.slice(name_at, namesz)?;
            let desc = segment.slice(desc_at, descsz)?;
            notes.push(Note {
                name: name.strip_suffix(b"\0").unwrap_or(name).to_vec(),
                n_type,
                desc: desc.to_vec(),
            });
            at = pad(desc_at + descsz);
        }
    }
    Ok(notes)
}

/// The 32-bit entry of a PVH note (name "Xen", type 18) among `notes`, if there is one.
pub fn pvh_entry(notes: &[Note]) -> Option<u32> {
    notes
        .iter()
        .find(|n| n.name == b"Xen" && n.n_type == XEN_ELFNOTE_PHYS32_ENTRY)
        .and_then(|n| n.desc.get(..4))
        .map(|d| u32::from_le_bytes([d[0], d[1], d[2], d[3]]))
}
