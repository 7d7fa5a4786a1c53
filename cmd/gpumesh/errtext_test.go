package main

import (
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestErrorText(t *testing.T) {
	denied := status.Error(codes.PermissionDenied, `caller "wg:ci" matches no allow rule (default deny)`)
	tests := []struct {
		err  error
		want string
	}{
		{denied, `PermissionDenied: caller "wg:ci" matches no allow rule (default deny)`},
		{fmt.Errorf("matrix_mul on gpu-host: %w", denied), `matrix_mul on gpu-host: PermissionDenied: caller "wg:ci" matches no allow rule (default deny)`},
		{fmt.Errorf("devices of gpu-host: %v", status.Error(codes.Unavailable, "connection error: desc = \"transport: dial: refused\"")),
			`devices of gpu-host: Unavailable: connection error: desc = "transport: dial: refused"`},
		{fmt.Errorf("a: %w; b: %w", denied, status.Error(codes.ResourceExhausted, "max_concurrent 4 reached")),
			`a: PermissionDenied: caller "wg:ci" matches no allow rule (default deny); b: ResourceExhausted: max_concurrent 4 reached`},
		{errors.New("policy: read /x: no such file"), "policy: read /x: no such file"},
		{errors.New("odd rpc error: code = not a code desc = x"), "odd rpc error: code = not a code desc = x"},
	}
	for _, tt := range tests {
		if got := errorText(tt.err); got != tt.want {
			t.Errorf("errorText(%q)\n got %q\nwant %q", tt.err, got, tt.want)
		}
	}
}
