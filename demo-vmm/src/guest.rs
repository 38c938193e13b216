//! The guest image: hand-assembled 64-bit ring-3 busy loop, identity-mapped
//! page tables and a GDT, plus the register state that enters it.
//!
//! Why ring 3 in long mode: under a page-table based nested KVM (kvm_pvm, no
//! VMX on the host CPU) real-mode and ring-0 guest code is emulated by the
//! host kernel one instruction at a time, while 64-bit user-mode code runs
//! natively. So the vCPU enters straight into a ring-3 code segment; the guest
//! never runs in ring 0.
//!
//! Guest-physical layout (all identity mapped, GVA == GPA):
//!
//! | GPA      | what                                   |
//! |----------|----------------------------------------|
//! | `0x1000` | PML4                                   |
//! | `0x2000` | PDPT                                   |
//! | `0x3000` | page directory                         |
//! | `0x4000` | page table (4 KiB pages)               |
//! | `0x5000` | GDT                                    |
//! | `0x6000` | 64-bit TSS + I/O bitmap, supervisor-only |
//! | `0x8000` | code page, mapped user + read-only     |

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

/// Size of the guest memory region: 64 KiB is enough for tables and code.
pub const MEM_SIZE: usize = 0x1_0000;
/// GPA of the PML4 (loaded into CR3).
pub const PML4_ADDR: u64 = 0x1000;
/// GPA of the page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0x2000;
/// GPA of the page directory.
pub const PD_ADDR: u64 = 0x3000;
/// GPA of the page table that maps the code page.
pub const PT_ADDR: u64 = 0x4000;
/// GPA of the GDT.
pub const GDT_ADDR: u64 = 0x5000;
/// GPA of the TSS.
pub const TSS_ADDR: u64 = 0x6000;
/// GPA (and GVA) where the guest code starts.
pub const CODE_ADDR: u64 = 0x8000;
/// I/O port the guest writes to after every busy-loop round; each write is a
/// `KVM_EXIT_IO` the host uses to check its stop flag.
pub const EXIT_PORT: u16 = 0xe9;
/// Busy-loop iterations between two port writes. `dec ecx; jnz` retires about
/// one iteration per cycle, so 4 Mi iterations is a couple of ms at 2-3 GHz
/// (measured on the kvm_pvm development host: ~1.7 ms between exits; the
/// test `kvm_guest_runs_in_guest_mode` prints it).
pub const LOOP_ITERATIONS: u32 = 4 << 20;

// Page-table entry bits (Intel SDM vol. 3, 4.5): present, writable, user.
const PTE_P: u64 = 1 << 0;
const PTE_RW: u64 = 1 << 1;
const PTE_US: u64 = 1 << 2;

// Control-register bits the guest needs for 64-bit paging (SDM vol. 3, 2.5).
const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// RFLAGS: bit 1 is reserved and must be 1; IOPL=3 (bits 12-13) lets ring 3
/// execute `out` without consulting the TSS I/O bitmap (on VMX/SVM; kvm_pvm
/// does not pass IOPL to the hardware, see [`write_image`]).
pub const RFLAGS: u64 = (1 << 1) | (3 << 12);

/// GDT selector of the 64-bit ring-0 code segment (unused, kept for a sane GDT).
const KERNEL_CS: u16 = 0x08;
/// GDT selector of the ring-0 data segment.
const KERNEL_DS: u16 = 0x10;
/// GDT selector of the ring-3 data segment, RPL 3.
pub const USER_DS: u16 = 0x18 | 3;
/// GDT selector of the 64-bit ring-3 code segment, RPL 3.
pub const USER_CS: u16 = 0x20 | 3;
/// GDT selector of the 64-bit TSS (a 16-byte system descriptor).
const TSS_SEL: u16 = 0x28;
/// Size of the 64-bit TSS proper (SDM vol. 3, 8.7); the I/O bitmap follows it.
const TSS_SIZE: u64 = 0x68;
/// Offset in the TSS of the 16-bit "I/O map base address" field.
const TSS_IOMAP_BASE_FIELD: u64 = 0x66;
/// Ports 0..IO_BITMAP_PORTS are covered by the I/O bitmap (all allowed).
const IO_BITMAP_PORTS: u64 = 0x400;
/// TSS limit: TSS, bitmap (one bit per port) and the mandatory trailing 0xff byte.
const TSS_LIMIT: u32 = (TSS_SIZE + IO_BITMAP_PORTS / 8) as u32;

/// The guest program, assembled by hand (64-bit mode):
///
/// ```text
/// 0x00: b9 NN NN NN NN   mov  ecx, LOOP_ITERATIONS
/// 0x05: ff c9            dec  ecx
/// 0x07: 75 fc            jnz  0x05          ; rel8 -4
/// 0x09: e6 e9            out  EXIT_PORT, al ; KVM_EXIT_IO to the host
/// 0x0b: eb f3            jmp  0x00          ; rel8 -13
/// ```
pub fn code() -> [u8; 13] {
    let n = LOOP_ITERATIONS.to_le_bytes();
    // `out imm8, al` encodes the port in one byte; EXIT_PORT fits in u8.
    let port = (EXIT_PORT & 0xff) as u8;
    [
        0xb9, n[0], n[1], n[2], n[3], // mov ecx, imm32
        0xff, 0xc9, // dec ecx
        0x75, 0xfc, // jnz -4
        0xe6, port, // out imm8, al
        0xeb, 0xf3, // jmp -13
    ]
}

/// One segment, described once and rendered both as a GDT entry and as the
/// `kvm_segment` KVM loads into the hidden descriptor cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Selector (index << 3 | RPL).
    pub selector: u16,
    /// Type field: 0xb = code execute/read accessed, 0x3 = data read/write accessed, 0xb (system) = busy TSS.
    pub type_: u8,
    /// 1 for code/data segments, 0 for system segments (TSS).
    pub s: u8,
    /// Descriptor privilege level.
    pub dpl: u8,
    /// 64-bit code segment flag.
    pub l: u8,
    /// Default operand size 32 bit (must be 0 when `l` is 1).
    pub db: u8,
    /// Granularity: limit counted in 4 KiB units.
    pub g: u8,
    /// Base address.
    pub base: u64,
    /// Limit (in bytes if `g` is 0, else in pages).
    pub limit: u32,
}

impl Segment {
    /// The 8-byte GDT descriptor (SDM vol. 3, 3.4.5); a TSS takes a second
    /// 8-byte word holding base bits 32-63, see [`Segment::gdt_high`].
    pub fn gdt_entry(&self) -> u64 {
        let base = self.base;
        let limit = u64::from(self.limit);
        let access = u64::from(self.type_ & 0xf)
            | (u64::from(self.s & 1) << 4)
            | (u64::from(self.dpl & 3) << 5)
            | (1 << 7); // present
        let flags = (u64::from(self.l & 1) << 1)
            | (u64::from(self.db & 1) << 2)
            | (u64::from(self.g & 1) << 3);
        (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (access << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (flags << 52)
            | (((base >> 24) & 0xff) << 56)
    }

    /// Upper 8 bytes of a 16-byte system descriptor: base bits 32-63.
    pub fn gdt_high(&self) -> u64 {
        self.base >> 32
    }

    /// The segment as KVM_SET_SREGS wants it; `limit` is expanded to bytes
    /// because KVM takes the effective (byte-granular) limit.
    pub fn kvm(&self) -> kvm_segment {
        let limit = if self.g == 1 {
            (self.limit << 12) | 0xfff
        } else {
            self.limit
        };
        kvm_segment {
            base: self.base,
            limit,
            selector: self.selector,
            type_: self.type_,
            present: 1,
            dpl: self.dpl,
            db: self.db,
            s: self.s,
            l: self.l,
            g: self.g,
            avl: 0,
            unusable: 0,
            padding: 0,
        }
    }
}

const fn flat(selector: u16, type_: u8, dpl: u8, l: u8, db: u8) -> Segment {
    Segment {
        selector,
        type_,
        s: 1,
        dpl,
        l,
        db,
        g: 1,
        base: 0,
        limit: 0xf_ffff,
    }
}

/// Ring-0 64-bit code segment.
pub const KERNEL_CODE: Segment = flat(KERNEL_CS, 0xb, 0, 1, 0);
/// Ring-0 data segment.
pub const KERNEL_DATA: Segment = flat(KERNEL_DS, 0x3, 0, 0, 1);
/// Ring-3 data segment (SS must have DPL == CPL == 3).
pub const USER_DATA: Segment = flat(USER_DS, 0x3, 3, 0, 1);
/// Ring-3 64-bit code segment: CS.DPL 3 makes CPL 3.
pub const USER_CODE: Segment = flat(USER_CS, 0xb, 3, 1, 0);
/// The TSS: type 0xb = busy 64-bit TSS, which is what TR must hold.
pub const TSS: Segment = Segment {
    selector: TSS_SEL,
    type_: 0xb,
    s: 0,
    dpl: 0,
    l: 0,
    db: 0,
    g: 0,
    base: TSS_ADDR,
    limit: TSS_LIMIT,
};

/// The GDT as 8-byte words: null, kernel code, kernel data, user data, user code, TSS (2 words).
pub fn gdt() -> [u64; 7] {
    [
        0,
        KERNEL_CODE.gdt_entry(),
        KERNEL_DATA.gdt_entry(),
        USER_DATA.gdt_entry(),
        USER_CODE.gdt_entry(),
        TSS.gdt_entry(),
        TSS.gdt_high(),
    ]
}

/// Writes page tables, GDT, TSS and code into `mem` (the guest's memory from GPA 0).
///
/// Every level carries the U/S bit: a ring-3 access needs it at all four
/// levels (SDM vol. 3, 4.6). Only two pages are mapped: the code page
/// (user, read-only) and the TSS page (supervisor-only).
///
/// Why a TSS with an I/O bitmap although RFLAGS.IOPL is 3: under kvm_pvm
/// the guest's ring 3 is the host's ring 3, and PVM does not hand IOPL to
/// the hardware, so `out` raises #GP and the host emulates it. The emulator
/// then finds IOPL 0 in the saved flags and falls back to the TSS I/O
/// permission bitmap (SDM vol. 1, 19.5.2), read through TR at a linear
/// address, hence the TSS must be mapped and its bitmap must clear our
/// port's bit. Without it the emulated `out` is a #GP, and a PVM guest
/// without an event entry turns every exception into a triple fault.
pub fn write_image(mem: &mut [u8]) -> Result<(), ImageTooSmall> {
    if mem.len() < MEM_SIZE {
        return Err(ImageTooSmall {
            have: mem.len(),
            need: MEM_SIZE,
        });
    }
    mem[..MEM_SIZE].fill(0);
    put_u64(mem, PML4_ADDR, PDPT_ADDR | PTE_P | PTE_RW | PTE_US);
    put_u64(mem, PDPT_ADDR, PD_ADDR | PTE_P | PTE_RW | PTE_US);
    put_u64(mem, PD_ADDR, PT_ADDR | PTE_P | PTE_RW | PTE_US);
    // The PT entry for GVA CODE_ADDR is at index CODE_ADDR >> 12.
    put_u64(
        mem,
        PT_ADDR + (CODE_ADDR >> 12) * 8,
        CODE_ADDR | PTE_P | PTE_US,
    );
    put_u64(mem, PT_ADDR + (TSS_ADDR >> 12) * 8, TSS_ADDR | PTE_P);
    // I/O map base: the bitmap starts right after the TSS; its bits are all
    // 0 (port allowed) up to IO_BITMAP_PORTS, then the 0xff end marker.
    let iomap = (TSS_ADDR + TSS_IOMAP_BASE_FIELD) as usize;
    mem[iomap..iomap + 2].copy_from_slice(&(TSS_SIZE as u16).to_le_bytes());
    mem[(TSS_ADDR + u64::from(TSS_LIMIT)) as usize] = 0xff;
    for (i, word) in gdt().iter().enumerate() {
        put_u64(mem, GDT_ADDR + 8 * i as u64, *word);
    }
    let code = code();
    let at = CODE_ADDR as usize;
    mem[at..at + code.len()].copy_from_slice(&code);
    Ok(())
}

fn put_u64(mem: &mut [u8], gpa: u64, value: u64) {
    let at = gpa as usize;
    mem[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// The guest memory given to [`write_image`] is smaller than the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("guest memory of {have} bytes is smaller than the {need} bytes the image needs")]
pub struct ImageTooSmall {
    /// Bytes provided.
    pub have: usize,
    /// Bytes needed.
    pub need: usize,
}

/// Turns `sregs` (as read from a fresh vCPU) into 64-bit ring-3 state:
/// paging on (CR0.PE|PG, CR4.PAE, EFER.LME|LMA), CR3 at the PML4, user
/// segments loaded, GDT and a valid TR so VM entry checks pass.
pub fn long_mode_sregs(sregs: &mut kvm_sregs) {
    sregs.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 = CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (gdt().len() * 8 - 1) as u16;
    // No IDT: the loop never faults; a fault would end as KVM_EXIT_SHUTDOWN.
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cs = USER_CODE.kvm();
    let ds = USER_DATA.kvm();
    sregs.ds = ds;
    sregs.es = ds;
    sregs.fs = ds;
    sregs.gs = ds;
    sregs.ss = ds;
    sregs.tr = TSS.kvm();
}

/// General registers at entry: RIP at the code, IOPL=3 flags, RSP unused.
pub fn entry_regs() -> kvm_regs {
    kvm_regs {
        rip: CODE_ADDR,
        rflags: RFLAGS,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_bytes_encode_the_loop() {
        let c = code();
        assert_eq!(c[0], 0xb9);
        assert_eq!(
            u32::from_le_bytes([c[1], c[2], c[3], c[4]]),
            LOOP_ITERATIONS
        );
        assert_eq!(&c[5..9], &[0xff, 0xc9, 0x75, 0xfc]);
        assert_eq!(&c[9..11], &[0xe6, 0xe9]);
        // jnz at 0x07 (2 bytes) jumps to 0x09 - 4 = 0x05 (the dec).
        assert_eq!(0x09_i64 + i64::from(c[8] as i8), 0x05);
        // jmp at 0x0b (2 bytes) jumps to 0x0d - 13 = 0x00 (the mov).
        assert_eq!(0x0d_i64 + i64::from(c[12] as i8), 0x00);
    }

    #[test]
    fn gdt_entries_match_known_flat_descriptors() {
        // Standard flat 64-bit descriptors, as found in any x86-64 kernel.
        assert_eq!(KERNEL_CODE.gdt_entry(), 0x00af_9b00_0000_ffff);
        assert_eq!(KERNEL_DATA.gdt_entry(), 0x00cf_9300_0000_ffff);
        assert_eq!(USER_DATA.gdt_entry(), 0x00cf_f300_0000_ffff);
        assert_eq!(USER_CODE.gdt_entry(), 0x00af_fb00_0000_ffff);
        assert_eq!(TSS.gdt_entry(), 0x0000_8b00_6000_00e8);
        assert_eq!(TSS.gdt_high(), 0);
    }

    #[test]
    fn selectors_index_their_gdt_slots() {
        let gdt = gdt();
        assert_eq!(gdt[(USER_CS >> 3) as usize], USER_CODE.gdt_entry());
        assert_eq!(gdt[(USER_DS >> 3) as usize], USER_DATA.gdt_entry());
        assert_eq!(gdt[(TSS_SEL >> 3) as usize], TSS.gdt_entry());
        assert_eq!(USER_CS & 3, 3);
        assert_eq!(USER_DS & 3, 3);
    }

    #[test]
    fn page_tables_map_code_for_user() {
        let mut mem = vec![0xaa_u8; MEM_SIZE];
        write_image(&mut mem).unwrap();
        let rd = |gpa: u64| {
            let a = gpa as usize;
            u64::from_le_bytes(mem[a..a + 8].try_into().unwrap())
        };
        // Walk GVA CODE_ADDR: indexes 0,0,0 then CODE_ADDR>>12.
        let pml4e = rd(PML4_ADDR);
        assert_eq!(pml4e & !0xfff, PDPT_ADDR);
        let pdpte = rd(PDPT_ADDR);
        assert_eq!(pdpte & !0xfff, PD_ADDR);
        let pde = rd(PD_ADDR);
        assert_eq!(pde & !0xfff, PT_ADDR);
        let pte = rd(PT_ADDR + (CODE_ADDR >> 12) * 8);
        assert_eq!(pte & !0xfff, CODE_ADDR);
        for e in [pml4e, pdpte, pde, pte] {
            assert_eq!(e & (PTE_P | PTE_US), PTE_P | PTE_US, "entry {e:#x}");
        }
        assert_eq!(pde & (1 << 7), 0, "4 KiB pages, no PS bit");
        let tss_pte = rd(PT_ADDR + (TSS_ADDR >> 12) * 8);
        assert_eq!(tss_pte, TSS_ADDR | PTE_P, "TSS mapped, supervisor-only");
        // I/O bitmap: base field points past the TSS, our port's bit is clear,
        // and the byte after the bitmap (at the limit) is 0xff.
        let base = u16::from_le_bytes([mem[0x6066], mem[0x6067]]);
        assert_eq!(base, 0x68);
        let port_byte = TSS_ADDR as usize + 0x68 + usize::from(EXIT_PORT / 8);
        assert_eq!(mem[port_byte] & (1 << (EXIT_PORT % 8)), 0);
        assert!(u64::from(EXIT_PORT) < IO_BITMAP_PORTS);
        assert_eq!(mem[TSS_ADDR as usize + TSS_LIMIT as usize], 0xff);
        let c = code();
        let at = CODE_ADDR as usize;
        assert_eq!(&mem[at..at + c.len()], &c);
        // Everything else is zeroed (no stale mappings).
        assert_eq!(rd(PT_ADDR), 0);
        assert_eq!(mem[MEM_SIZE - 1], 0);
    }

    #[test]
    fn image_needs_enough_memory() {
        let mut mem = vec![0_u8; 0x100];
        assert_eq!(
            write_image(&mut mem),
            Err(ImageTooSmall {
                have: 0x100,
                need: MEM_SIZE
            })
        );
    }

    #[test]
    fn sregs_enter_ring3_long_mode() {
        let mut s = kvm_sregs::default();
        long_mode_sregs(&mut s);
        assert_eq!(s.cs.dpl, 3);
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.cs.db, 0);
        assert_eq!(s.cs.selector & 3, 3);
        assert_eq!(s.ss.dpl, 3);
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_ne!(s.cr4 & CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cs.limit, 0xffff_ffff);
        assert_eq!(s.tr.limit, TSS_LIMIT);
        let r = entry_regs();
        assert_eq!(r.rflags & 0x3000, 0x3000);
        assert_eq!(r.rflags & 2, 2);
        assert_eq!(r.rip, CODE_ADDR);
    }
}
