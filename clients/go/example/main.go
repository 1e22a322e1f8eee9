// Command example streams one completion, asks for one whole completion and shows the error
// details of a refused request, with the client generated from Switchboard's protos.
//
//	make clients
//	cd clients/go && go mod tidy
//	source ../../.devstack/env   # with `make run` going: the API key, CA and router address
//	go run ./example
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	commonv1 "github.com/switchboard-llm/switchboard/clients/go/gen/switchboard/common/v1"
	routerv1 "github.com/switchboard-llm/switchboard/clients/go/gen/switchboard/router/v1"
)

const callTimeout = 30 * time.Second

func setting(name string) string {
	value := os.Getenv(name)
	if value == "" {
		log.Fatalf("%s is not set", name)
	}
	return value
}

// dial opens a TLS channel to the router's public port, trusting the CA in caPath.
func dial(address, caPath string) (*grpc.ClientConn, error) {
	pem, err := os.ReadFile(caPath)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", caPath)
	}
	creds := credentials.NewTLS(&tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12})
	return grpc.Dial(address, grpc.WithTransportCredentials(creds))
}

func stream(ctx context.Context, router routerv1.RouterServiceClient, messages []*commonv1.ChatMessage) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	events, err := router.StreamCompletion(ctx, &routerv1.StreamCompletionRequest{
		Model: "switchboard/demo", Messages: messages,
	})
	if err != nil {
		return err
	}
	for {
		event, err := events.Recv()
		if errors.Is(err, io.EOF) {
			fmt.Println()
			return nil
		}
		if err != nil {
			return err
		}
		switch e := event.Event.(type) {
		case *routerv1.StreamCompletionResponse_Start:
			fmt.Printf("generation %s: ", e.Start.GenerationId)
		case *routerv1.StreamCompletionResponse_Delta:
			fmt.Print(e.Delta.Text)
		case *routerv1.StreamCompletionResponse_End:
			fmt.Printf(" [%d tokens, $%s]", e.End.Usage.GetCompletionTokens(), e.End.CostUsd)
		}
	}
}

// explain prints a failed call's code and its google.rpc details: ErrorInfo's reason and
// BadRequest's field violations (grpc-status-details-bin).
func explain(err error) {
	st := status.Convert(err)
	fmt.Printf("%s: %s\n", st.Code(), st.Message())
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			fmt.Printf("  reason %s (%s)\n", d.Reason, d.Domain)
		case *errdetails.BadRequest:
			for _, v := range d.FieldViolations {
				fmt.Printf("  %s: %s\n", v.Field, v.Description)
			}
		}
	}
}

func main() {
	conn, err := dial(setting("SWITCHBOARD_ROUTER_ADDR"), setting("SWITCHBOARD_TLS_CA"))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	router := routerv1.NewRouterServiceClient(conn)
	ctx := metadata.AppendToOutgoingContext(context.Background(),
		"authorization", "Bearer "+setting("SWITCHBOARD_API_KEY"))
	messages := []*commonv1.ChatMessage{{Role: commonv1.Role_ROLE_USER, Content: "Say hello"}}

	if err := stream(ctx, router, messages); err != nil {
		explain(err)
		os.Exit(1)
	}
	unaryCtx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	reply, err := router.CreateCompletion(unaryCtx, &routerv1.CreateCompletionRequest{
		Model: "switchboard/demo", Messages: messages,
	})
	if err != nil {
		explain(err)
		os.Exit(1)
	}
	fmt.Printf("whole: %s\n", reply.Text)
	// No messages: INVALID_ARGUMENT with ErrorInfo and BadRequest details.
	_, err = router.CreateCompletion(unaryCtx, &routerv1.CreateCompletionRequest{Model: "switchboard/demo"})
	explain(err)
}
