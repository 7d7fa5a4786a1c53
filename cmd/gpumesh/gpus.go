package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/gpumesh/gpumesh/diag"
	"github.com/gpumesh/gpumesh/gpusvc/nvml"
	"github.com/gpumesh/gpumesh/node"
)

// gpusReport is what `gpumesh gpus` prints, for this machine or a host.
type gpusReport struct {
	Host    string   `json:"host,omitempty"`   // the host asked (--host)
	Caller  string   `json:"caller,omitempty"` // who the host says we are
	Backend string   `json:"backend,omitempty"`
	Status  string   `json:"status,omitempty"`
	Driver  string   `json:"driver_version,omitempty"`
	CUDA    string   `json:"cuda_version,omitempty"`
	NVML    string   `json:"nvml_version,omitempty"`
	NVRTC   string   `json:"nvrtc,omitempty"`
	GPUs    []gpuRow `json:"gpus"`
}

type gpuRow struct {
	Index              int      `json:"index"`
	UUID               string   `json:"uuid,omitempty"`
	Name               string   `json:"name"`
	MemoryTotal        uint64   `json:"memory_total_bytes"`
	MemoryUsed         uint64   `json:"memory_used_bytes"`
	UtilizationPercent uint32   `json:"utilization_percent"`
	TemperatureC       int32    `json:"temperature_c"`
	PowerMW            uint32   `json:"power_mw"`
	Unsupported        []string `json:"unsupported,omitempty"`
}

func newGPUsCmd() *cobra.Command {
	var (
		tf          tailnetFlags
		host        string
		asJSON      bool
		joinTimeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "gpus",
		Short: "Show the GPUs of this machine (NVML) or of a GPU host, like nvidia-smi",
		Long: `gpus prints this machine's NVIDIA GPUs with live telemetry, read through
NVML (libnvidia-ml.so.1, loaded at run time). Without a driver it says so and
exits 0: such a host serves the CPU backend.

With --host it joins the tailnet and asks that GPU host's endpoint instead
(its Devices call), which also says which backend the host serves.`,
		Example: "  gpumesh gpus\n  gpumesh gpus --json\n  gpumesh gpus --host gpu-host",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var r gpusReport
			if host == "" {
				r = localGPUs()
			} else {
				var err error
				if r, err = remoteGPUs(cmd.Context(), &tf, host, joinTimeout); err != nil {
					return err
				}
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return diag.WriteJSON(out, r)
			}
			printGPUs(out, r)
			return nil
		},
	}
	tf.register(cmd, "gpumesh-gpus")
	cmd.Flags().StringVar(&host, "host", "", "ask this GPU host (tailnet name[:port]) instead of this machine")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().DurationVar(&joinTimeout, "join-timeout", node.DefaultJoinTimeout, "with --host: give up joining the tailnet after this long")
	return cmd
}

// localGPUs reads this machine's GPUs through NVML.
func localGPUs() gpusReport {
	rep, err := nvml.Probe()
	if err != nil {
		return gpusReport{Backend: "cpu", Status: fmt.Sprintf("no NVIDIA GPU (NVML: %s)", strings.TrimPrefix(err.Error(), "nvml: ")), GPUs: []gpuRow{}}
	}
	r := gpusReport{Driver: rep.DriverVersion, CUDA: rep.CUDAVersion, NVML: rep.NVMLVersion, GPUs: []gpuRow{}}
	if len(rep.Devices) == 0 {
		r.Backend = "cpu"
		r.Status = fmt.Sprintf("no NVIDIA GPU (NVML: driver %s sees no devices)", rep.DriverVersion)
		return r
	}
	if name, err := nvml.FindNVRTC(); err == nil {
		r.NVRTC = name
	} else {
		r.NVRTC = "none (custom CUDA C needs it; PTX does not)"
	}
	for _, d := range rep.Devices {
		r.GPUs = append(r.GPUs, gpuRow{
			Index: d.Index, UUID: d.UUID, Name: d.Name, MemoryTotal: d.MemoryTotal, MemoryUsed: d.MemoryUsed,
			UtilizationPercent: d.UtilizationPercent, TemperatureC: d.TemperatureC, PowerMW: d.PowerMW, Unsupported: d.Unsupported,
		})
	}
	return r
}

// remoteGPUs joins the tailnet and asks host's Devices.
func remoteGPUs(ctx context.Context, tf *tailnetFlags, host string, joinTimeout time.Duration) (gpusReport, error) {
	cfg, err := tf.config()
	if err != nil {
		return gpusReport{}, err
	}
	ov, err := node.Join(ctx, node.JoinConfig{Tailnet: &cfg, Timeout: joinTimeout})
	if err != nil {
		return gpusReport{}, err
	}
	defer ov.Close()
	c, err := node.Dial(ov.Overlay, host)
	if err != nil {
		return gpusReport{}, err
	}
	defer c.Close()
	dctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	res, err := c.Devices(dctx)
	if err != nil {
		return gpusReport{}, fmt.Errorf("devices of %s: %w", host, err)
	}
	r := gpusReport{Host: res.GetHost(), Caller: res.GetCaller(), Backend: res.GetBackend(), Status: res.GetStatus(), NVRTC: res.GetNvrtc(), GPUs: []gpuRow{}}
	for _, d := range res.GetDevices() {
		if r.Driver == "" {
			r.Driver, r.CUDA = d.GetDriverVersion(), d.GetCudaVersion()
		}
		r.GPUs = append(r.GPUs, gpuRow{
			Index: int(d.GetIndex()), UUID: d.GetUuid(), Name: d.GetName(), MemoryTotal: d.GetMemoryTotal(), MemoryUsed: d.GetMemoryUsed(),
			UtilizationPercent: d.GetUtilizationPercent(), TemperatureC: d.GetTemperatureC(), PowerMW: d.GetPowerMw(),
		})
	}
	return r, nil
}

// printGPUs writes r as a table, nvidia-smi style.
func printGPUs(w io.Writer, r gpusReport) {
	if r.Host != "" {
		fmt.Fprintf(w, "host %s (you are %s): backend %s\n", r.Host, r.Caller, r.Backend)
		if r.Status != "" {
			fmt.Fprintf(w, "status: %s\n", r.Status)
		}
	} else if len(r.GPUs) == 0 {
		fmt.Fprintf(w, "%s; backend %s\n", r.Status, r.Backend)
		return
	}
	var head []string
	for _, kv := range [][2]string{{"driver", r.Driver}, {"CUDA", r.CUDA}, {"NVML", r.NVML}, {"NVRTC", r.NVRTC}} {
		if kv[1] != "" {
			head = append(head, kv[0]+" "+kv[1])
		}
	}
	if len(head) > 0 {
		fmt.Fprintln(w, strings.Join(head, "   "))
	}
	if len(r.GPUs) == 0 {
		fmt.Fprintln(w, "no devices")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GPU\tNAME\tUUID\tMEMORY USED / TOTAL\tUTIL\tTEMP\tPOWER")
	for _, g := range r.GPUs {
		mem := "-"
		if g.MemoryTotal > 0 {
			mem = fmt.Sprintf("%s / %s", mib(g.MemoryUsed), mib(g.MemoryTotal))
		} else if g.MemoryUsed > 0 {
			mem = mib(g.MemoryUsed) + " held"
		}
		temp, power := "-", "-"
		if g.TemperatureC != 0 {
			temp = fmt.Sprintf("%dC", g.TemperatureC)
		}
		if g.PowerMW != 0 {
			power = fmt.Sprintf("%.0fW", float64(g.PowerMW)/1000)
		}
		uuid := g.UUID
		if uuid == "" {
			uuid = "-"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d%%\t%s\t%s\n", g.Index, g.Name, uuid, mem, g.UtilizationPercent, temp, power)
	}
	tw.Flush()
	for _, g := range r.GPUs {
		if len(g.Unsupported) > 0 {
			fmt.Fprintf(w, "gpu %d: not reported: %s\n", g.Index, strings.Join(g.Unsupported, ", "))
		}
	}
}

// mib renders bytes in MiB, as nvidia-smi does.
func mib(n uint64) string {
	if n > 0 && n < 1<<20 {
		return fmt.Sprintf("%dKiB", (n+1023)>>10)
	}
	return fmt.Sprintf("%dMiB", (n+(1<<19))>>20)
}
