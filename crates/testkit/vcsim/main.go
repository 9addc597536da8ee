// Command vcsim runs govmomi's vCenter simulator for Haven's tests, on 127.0.0.1 over
// TLS, with what the simulator lacks for a backup tool:
//
//   - every VM's disks get a raw "-flat.vmdk" of -disk-mib MiB beside their descriptor
//     (as ESXi keeps them), which the tests write real data into;
//   - QueryChangedDiskAreas, answered from the flat files themselves: when a snapshot is
//     taken of a VM with change tracking on, each disk gets a new changeId and the
//     hash of every 64 KiB block of its flat file is kept under it; the areas changed
//     since changeId C for snapshot S are the blocks whose hashes differ between C and
//     S's changeId. "*" returns the blocks that are not all zeros; an unknown changeId
//     is a SOAP fault, as on ESXi after change tracking was reset.
//
// Replies cover at most 8 MiB of the disk each, so clients must page through
// startOffset as they must with ESXi.
//
// Once serving it writes a JSON description of itself (URL, credentials, datastore
// folders, VM names) to the file -info names (written aside and renamed, so a reader
// never sees half of it), and serves until SIGTERM or SIGINT. Datastore folders are
// made under $TMPDIR, which the test points at a folder it removes.
//
// Built with Debian's packages only: GO111MODULE=off GOPATH=/usr/share/gocode go build.
package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	blockSize   = 64 << 10
	replyWindow = 8 << 20
)

// blockState is a disk's content at one changeId: a hash per block.
type blockState struct {
	size   int64
	hashes [][32]byte
	zero   []bool
}

// tracker holds every changeId handed out and which changeId each snapshot's disks carry.
type tracker struct {
	sync.Mutex
	next      int
	states    map[string]*blockState
	snapshots map[string]map[int32]string
	dsDirs    map[string]string
}

var cbt = &tracker{
	states:    map[string]*blockState{},
	snapshots: map[string]map[int32]string{},
	dsDirs:    map[string]string{},
}

// flatPath maps a disk's "[DS] dir/name.vmdk" to the local path of its -flat.vmdk.
func flatPath(fileName string) (string, error) {
	var p struct{ ds, rel string }
	if !strings.HasPrefix(fileName, "[") {
		return "", fmt.Errorf("not a datastore path: %q", fileName)
	}
	end := strings.Index(fileName, "]")
	if end < 0 {
		return "", fmt.Errorf("not a datastore path: %q", fileName)
	}
	p.ds = fileName[1:end]
	p.rel = strings.TrimSpace(fileName[end+1:])
	dir, ok := cbt.dsDirs[p.ds]
	if !ok {
		return "", fmt.Errorf("unknown datastore %q", p.ds)
	}
	return filepath.Join(dir, strings.TrimSuffix(p.rel, ".vmdk")+"-flat.vmdk"), nil
}

func scan(file string) (*blockState, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	state := &blockState{}
	buf := make([]byte, blockSize)
	zeros := make([]byte, blockSize)
	for {
		n, err := io.ReadFull(f, buf)
		if n > 0 {
			state.size += int64(n)
			state.hashes = append(state.hashes, sha256.Sum256(buf[:n]))
			state.zero = append(state.zero, bytes.Equal(buf[:n], zeros[:n]))
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return state, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

func disks(vm *simulator.VirtualMachine) []*types.VirtualDisk {
	var out []*types.VirtualDisk
	for _, device := range vm.Config.Hardware.Device {
		if disk, ok := device.(*types.VirtualDisk); ok {
			out = append(out, disk)
		}
	}
	return out
}

func backing(disk *types.VirtualDisk) *types.VirtualDiskFlatVer2BackingInfo {
	b, _ := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
	return b
}

// CbtVM adds change tracking to simulator.VirtualMachine.
type CbtVM struct {
	*simulator.VirtualMachine
}

// CreateSnapshotTask gives each disk a new changeId holding its blocks now, then takes
// the simulator's snapshot (whose configuration carries the new changeIds).
func (vm *CbtVM) CreateSnapshotTask(req *types.CreateSnapshot_Task) soap.HasFault {
	ids := map[int32]string{}
	tracking := vm.Config.ChangeTrackingEnabled != nil && *vm.Config.ChangeTrackingEnabled
	if tracking {
		cbt.Lock()
		for _, disk := range disks(vm.VirtualMachine) {
			b := backing(disk)
			if b == nil {
				continue
			}
			file, err := flatPath(b.FileName)
			if err != nil {
				cbt.Unlock()
				return &methods.CreateSnapshot_TaskBody{Fault_: simulator.Fault(err.Error(), &types.InvalidArgument{})}
			}
			state, err := scan(file)
			if err != nil {
				cbt.Unlock()
				return &methods.CreateSnapshot_TaskBody{Fault_: simulator.Fault(err.Error(), &types.FileFault{File: file})}
			}
			cbt.next++
			id := fmt.Sprintf("52 %02x %02x 8e 61 5f 3a c4-b7 %04x/%d", disk.Key&0xff, cbt.next&0xff, cbt.next, cbt.next)
			cbt.states[id] = state
			ids[disk.Key] = id
			b.ChangeId = id
		}
		cbt.Unlock()
	}
	body := vm.VirtualMachine.CreateSnapshotTask(req)
	if vm.Snapshot != nil && vm.Snapshot.CurrentSnapshot != nil {
		cbt.Lock()
		cbt.snapshots[vm.Snapshot.CurrentSnapshot.Value] = ids
		cbt.Unlock()
	}
	return body
}

// QueryChangedDiskAreas answers from the block hashes kept per changeId.
func (vm *CbtVM) QueryChangedDiskAreas(req *types.QueryChangedDiskAreas) soap.HasFault {
	body := &methods.QueryChangedDiskAreasBody{}
	fail := func(msg string, fault types.BaseMethodFault) soap.HasFault {
		body.Fault_ = simulator.Fault(msg, fault)
		return body
	}
	if req.Snapshot == nil {
		return fail("a snapshot is required", &types.InvalidArgument{InvalidProperty: "snapshot"})
	}
	cbt.Lock()
	defer cbt.Unlock()
	ids, ok := cbt.snapshots[req.Snapshot.Value]
	if !ok {
		return fail("no such snapshot", &types.ManagedObjectNotFound{Obj: *req.Snapshot})
	}
	id, ok := ids[req.DeviceKey]
	if !ok {
		return fail("change tracking was off for this disk at the snapshot", &types.FileFault{})
	}
	now := cbt.states[id]
	if req.StartOffset < 0 || req.StartOffset > now.size {
		return fail("startOffset out of range", &types.InvalidArgument{InvalidProperty: "startOffset"})
	}
	var then *blockState
	if req.ChangeId != "*" {
		then, ok = cbt.states[req.ChangeId]
		if !ok {
			return fail("unknown changeId", &types.InvalidArgument{InvalidProperty: "changeId"})
		}
	}
	end := req.StartOffset + replyWindow
	if end > now.size {
		end = now.size
	}
	info := types.DiskChangeInfo{StartOffset: req.StartOffset, Length: end - req.StartOffset}
	for block := req.StartOffset / blockSize; block*blockSize < end; block++ {
		var changed bool
		if then == nil {
			changed = !now.zero[block]
		} else {
			changed = block >= int64(len(then.hashes)) || then.hashes[block] != now.hashes[block]
		}
		if !changed {
			continue
		}
		start := block * blockSize
		length := int64(blockSize)
		if start+length > now.size {
			length = now.size - start
		}
		areas := info.ChangedArea
		if n := len(areas); n > 0 && areas[n-1].Start+areas[n-1].Length == start {
			areas[n-1].Length += length
		} else {
			info.ChangedArea = append(areas, types.DiskChangeExtent{Start: start, Length: length})
		}
	}
	body.Res = &types.QueryChangedDiskAreasResponse{Returnval: info}
	return body
}

// certificates makes a CA and a certificate for 127.0.0.1 it signs (ECDSA P-256:
// httptest's built-in certificate has an RSA key too weak for rustls and OpenSSL), and
// writes the CA's PEM to caFile.
func certificates(caFile string) (tls.Certificate, error) {
	key := func() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }
	caKey, err := key()
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	ca := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "vcsim test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	leafKey, err := key()
	if err != nil {
		return tls.Certificate{}, err
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost"},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, ca, &leafKey.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	pemCA := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	if err := os.WriteFile(caFile, pemCA, 0o600); err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{leafDER, caDER}, PrivateKey: leafKey}, nil
}

func main() {
	diskMiB := flag.Int64("disk-mib", 16, "size of every VM disk in MiB")
	infoFile := flag.String("info", "", "where to write the JSON description once serving")
	caFile := flag.String("ca-file", "", "where to write the PEM of the CA that signed the server's certificate")
	flag.Parse()
	if *caFile == "" || *infoFile == "" {
		log.Fatal("-ca-file and -info are required")
	}
	cert, err := certificates(*caFile)
	if err != nil {
		log.Fatal(err)
	}

	model := simulator.VPX()
	if err := model.Create(); err != nil {
		log.Fatal(err)
	}
	defer model.Remove()
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	model.Service.Listen = &url.URL{Host: "127.0.0.1:0", User: url.UserPassword("haven", "vsphere-secret")}

	for _, entity := range simulator.Map.All("Datastore") {
		ds := entity.(*simulator.Datastore)
		cbt.dsDirs[ds.Name] = ds.Info.GetDatastoreInfo().Url
	}
	var vms []string
	for _, entity := range simulator.Map.All("VirtualMachine") {
		vm := entity.(*simulator.VirtualMachine)
		for _, disk := range disks(vm) {
			disk.CapacityInKB = *diskMiB << 10
			disk.CapacityInBytes = *diskMiB << 20
			b := backing(disk)
			if b == nil {
				continue
			}
			file, err := flatPath(b.FileName)
			if err != nil {
				log.Fatal(err)
			}
			if err := os.MkdirAll(path.Dir(file), 0o700); err != nil {
				log.Fatal(err)
			}
			if err := os.WriteFile(file, nil, 0o600); err != nil {
				log.Fatal(err)
			}
			if err := os.Truncate(file, *diskMiB<<20); err != nil {
				log.Fatal(err)
			}
		}
		simulator.Map.Put(&CbtVM{vm})
		vms = append(vms, vm.Name)
	}

	server := model.Service.NewServer()
	defer server.Close()
	sdk := *server.URL
	sdk.User = nil
	info := map[string]interface{}{
		"url":        sdk.String(),
		"ca_file":    *caFile,
		"user":       "haven",
		"password":   "vsphere-secret",
		"datastores": cbt.dsDirs,
		"vms":        vms,
	}
	line, _ := json.Marshal(info)
	if err := os.WriteFile(*infoFile+".partial", line, 0o600); err != nil {
		log.Fatal(err)
	}
	if err := os.Rename(*infoFile+".partial", *infoFile); err != nil {
		log.Fatal(err)
	}

	stop := make(chan os.Signal, 2)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
