// Package tftp is Kiln's read-only TFTP server for network booting: it
// serves the firmware stage (iPXE binaries such as undionly.kpxe and
// ipxe.efi) from one directory, opened through os.OpenRoot so that no
// request, symlink or ".." can reach a file outside it. Write requests are
// refused with an access-violation error, the tsize and blksize options are
// negotiated, and concurrent transfers are bounded, in all and per source
// address: beyond a bound a request is refused at once rather than queued,
// and a transfer whose first block is not acknowledged within
// FirstBlockTimeout gives its slot back. Every request ends in an
// Event (file, peer, bytes, result) that the rack agent turns into the
// machine's boot timeline, and in the kiln_tftp_* metrics.
package tftp
