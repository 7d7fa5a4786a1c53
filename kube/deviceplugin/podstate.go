package deviceplugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"

	"github.com/gpumesh/gpumesh/gpusvc/preface"
	"github.com/gpumesh/gpumesh/kube"
	"github.com/gpumesh/gpumesh/overlay"
)

// savedPod is a named pod as the state file keeps it.
type savedPod struct {
	Pod   overlay.Pod `json:"pod"`
	Hosts []string    `json:"hosts"`
}

// maxHostName bounds a host's name in the state file.
const maxHostName = 256

// load reads the state file, if there is one, into p.named: each pod as
// named long ago, so that the first check releases it unless it still
// holds its devices. Entries that are not valid are skipped.
func (p *Pods) load() error {
	f, err := os.Open(p.cfg.StateFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("deviceplugin: state: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxStateBytes+1))
	if err != nil {
		return fmt.Errorf("deviceplugin: state %s: %w", p.cfg.StateFile, err)
	}
	if len(b) > maxStateBytes {
		return fmt.Errorf("deviceplugin: state %s is over %d bytes", p.cfg.StateFile, maxStateBytes)
	}
	var saved []savedPod
	if err := json.Unmarshal(b, &saved); err != nil {
		return fmt.Errorf("deviceplugin: state %s: %w", p.cfg.StateFile, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, sp := range saved {
		if len(p.named) >= maxNamed {
			break
		}
		pod := sp.Pod
		if (preface.Preface{Op: preface.Release, Pod: &pod}).Validate() != nil {
			continue
		}
		hosts := slices.DeleteFunc(slices.Clone(sp.Hosts), func(h string) bool {
			return h == "" || len(h) > maxHostName || strings.ContainsAny(h, "\x00\n")
		})
		if len(hosts) == 0 {
			continue
		}
		p.named[pod.UID] = &named{pod: pod, hosts: hosts}
	}
	return nil
}

// save writes the named pods to the state file (a new file renamed over
// the old one). A failure is logged: it costs only the early release
// after a restart.
func (p *Pods) save() {
	if p.cfg.StateFile == "" {
		return
	}
	p.saveMu.Lock()
	defer p.saveMu.Unlock()
	p.mu.Lock()
	saved := make([]savedPod, 0, len(p.named))
	for _, n := range p.named {
		saved = append(saved, savedPod{Pod: n.pod, Hosts: slices.Clone(n.hosts)})
	}
	p.mu.Unlock()
	slices.SortFunc(saved, func(a, b savedPod) int { return strings.Compare(a.Pod.UID, b.Pod.UID) })
	b, err := json.Marshal(saved)
	if err == nil {
		err = kube.WriteFileAtomic(p.cfg.StateFile, b, 0o600)
	}
	if err != nil {
		p.log.Warn("deviceplugin: cannot keep the named pods for a restart", "err", err)
	}
}
