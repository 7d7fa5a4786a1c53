package pool_test

import (
	"github.com/gpumesh/gpumesh/gpusvc"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
)

func reluReq() *pb.ComputeRequest {
	return &pb.ComputeRequest{Kernel: "relu", Args: gpusvc.ArgsToPB([]kernel.Arg{vec(4)})}
}
