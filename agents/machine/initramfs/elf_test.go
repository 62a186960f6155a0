package initramfs

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"maps"
	"slices"
	"testing"
)

// fakeELF is a minimal little-endian ELF64 file for tests: program headers
// of the given types (an executable) and the named sections (a module's
// .modinfo). debug/elf reads it as it reads the real thing.
func fakeELF(t *testing.T, typ elf.Type, progs []elf.ProgType, sections map[string][]byte) []byte {
	t.Helper()
	const ehsize, phsize, shsize = 64, 56, 64
	var body bytes.Buffer
	shstr := []byte{0}
	type sec struct {
		name       uint32
		off, size  uint64
		typ, flags uint64
	}
	secs := []sec{{}}
	dataStart := uint64(ehsize + phsize*len(progs))
	for _, n := range sortedKeys(sections) {
		secs = append(secs, sec{name: uint32(len(shstr)), off: dataStart + uint64(body.Len()), size: uint64(len(sections[n])), typ: uint64(elf.SHT_PROGBITS)})
		shstr = append(append(shstr, n...), 0)
		body.Write(sections[n])
	}
	secs = append(secs, sec{name: uint32(len(shstr)), off: dataStart + uint64(body.Len()), typ: uint64(elf.SHT_STRTAB)})
	shstr = append(append(shstr, ".shstrtab"...), 0)
	secs[len(secs)-1].size = uint64(len(shstr))
	body.Write(shstr)
	shoff := dataStart + uint64(body.Len())

	var b bytes.Buffer
	le := binary.LittleEndian
	w := func(v any) { binary.Write(&b, le, v) }
	b.Write([]byte{0x7f, 'E', 'L', 'F', byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)})
	b.Write(make([]byte, 9))
	w(uint16(typ))
	w(uint16(elf.EM_X86_64))
	w(uint32(elf.EV_CURRENT))
	w(uint64(0)) // entry
	var phoff uint64
	if len(progs) > 0 {
		phoff = ehsize
	}
	w(phoff)
	w(shoff)
	w(uint32(0)) // flags
	w(uint16(ehsize))
	w(uint16(phsize))
	w(uint16(len(progs)))
	w(uint16(shsize))
	w(uint16(len(secs)))
	w(uint16(len(secs) - 1)) // shstrndx
	for _, p := range progs {
		w(uint32(p))
		w(uint32(elf.PF_R))
		w([6]uint64{}) // offset, vaddr, paddr, filesz, memsz, align
	}
	b.Write(body.Bytes())
	for _, s := range secs {
		w(s.name)
		w(uint32(s.typ))
		w(s.flags)
		w(uint64(0)) // addr
		w(s.off)
		w(s.size)
		w(uint32(0)) // link
		w(uint32(0)) // info
		w(uint64(1)) // addralign
		w(uint64(0)) // entsize
	}
	return b.Bytes()
}

func sortedKeys(m map[string][]byte) []string { return slices.Sorted(maps.Keys(m)) }

// staticAgent is a static amd64 executable as far as Build checks.
func staticAgent(t *testing.T) []byte {
	return fakeELF(t, elf.ET_EXEC, []elf.ProgType{elf.PT_LOAD}, nil)
}

// module is a kernel module whose .modinfo says what it depends on, what
// it would like loaded first (softdep) and its aliases.
func module(t *testing.T, name, depends string, more ...string) []byte {
	info := "license=GPL\x00depends=" + depends + "\x00name=" + name + "\x00vermagic=6.1.0-test SMP mod_unload\x00"
	if len(more) > 0 && more[0] != "" {
		info += "softdep=" + more[0] + "\x00"
	}
	for _, a := range more[min(1, len(more)):] {
		info += "alias=" + a + "\x00"
	}
	return fakeELF(t, elf.ET_REL, nil, map[string][]byte{".modinfo": []byte(info), ".text": {0xc3}})
}
