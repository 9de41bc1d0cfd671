// The anchor of bench/ads.sh: go-control-plane, the reference xDS server, serving exactly the
// resources citadel served (a dump the benchmark wrote) from its snapshot cache over ADS, on
// TLS 1.3 with the same P-256 certificates, to the same simulated clients.
//
// Usage: go-control-plane -dump FILE -cert PEM -key PEM -addr-file FILE
// Each line on stdin names another dump, published as the next snapshot version.
// A dump is a sequence of records: a 4-byte big-endian length, then an encoded
// google.protobuf.Any.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"strconv"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	// Registers the Envoy types that the dump's Any values name.
	_ "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// Every simulated sidecar is one class: one snapshot serves them all.
type oneClass struct{}

func (oneClass) ID(*core.Node) string { return "bench" }

func load(path string) (map[string][]types.Resource, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := bufio.NewReader(f)
	out := map[string][]types.Resource{}
	for {
		var n uint32
		if err := binary.Read(r, binary.BigEndian, &n); err == io.EOF {
			return out, nil
		} else if err != nil {
			return nil, err
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		var a anypb.Any
		if err := proto.Unmarshal(buf, &a); err != nil {
			return nil, err
		}
		m, err := a.UnmarshalNew()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", a.TypeUrl, err)
		}
		out[a.TypeUrl] = append(out[a.TypeUrl], m)
	}
}

func main() {
	dump := flag.String("dump", "", "resources to serve")
	certFile := flag.String("cert", "", "server certificate chain (PEM)")
	keyFile := flag.String("key", "", "server key (PEM)")
	addrFile := flag.String("addr-file", "", "where to write the listening address")
	flag.Parse()

	ctx := context.Background()
	snapshots := cache.NewSnapshotCache(true, oneClass{}, nil)
	version := 0
	publish := func(path string) {
		resources, err := load(path)
		if err != nil {
			log.Fatalf("%s: %v", path, err)
		}
		version++
		snap, err := cache.NewSnapshot(strconv.Itoa(version), resources)
		if err != nil {
			log.Fatal(err)
		}
		if err := snapshots.SetSnapshot(ctx, "bench", snap); err != nil {
			log.Fatal(err)
		}
	}
	publish(*dump)

	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		log.Fatal(err)
	}
	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAnyClientCert,
		MinVersion:   tls.VersionTLS13,
	})
	grpcServer := grpc.NewServer(grpc.Creds(creds), grpc.MaxConcurrentStreams(1000000))
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(grpcServer, server.NewServer(ctx, snapshots, nil))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(*addrFile, []byte(lis.Addr().String()), 0o644); err != nil {
		log.Fatal(err)
	}
	go func() {
		lines := bufio.NewScanner(os.Stdin)
		for lines.Scan() {
			publish(lines.Text())
		}
	}()
	log.Fatal(grpcServer.Serve(lis))
}
