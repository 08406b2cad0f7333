// gRPC health through grpc-go's own health client: every service answers it, the gateway
// for itself. Prints the status name, e.g. SERVING; a failure as one line on stderr, its
// reason then its message (exit 1): for a gateway not reached, where the call went and
// what to check (rpcerror.Dialled). src/health.ts in Go. GENSEARCH_ADDRESS as in the example.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"gensearch/clients/go/gatewayenv"
	"gensearch/clients/go/rpcerror"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func main() {
	addr, err := gatewayenv.Address()
	if err != nil {
		fail(err)
	}
	conn, err := grpc.Dial(addr, grpc.WithInsecure())
	if err != nil {
		fail(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reply, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		if failure, ok := rpcerror.Dialled(addr, err); ok {
			fmt.Fprintf(os.Stderr, "%s: %s\n", failure.Reason, failure.Message)
			os.Exit(1)
		}
		fail(err)
	}
	fmt.Println(reply.Status)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
