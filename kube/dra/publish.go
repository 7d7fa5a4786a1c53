package dra

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/klog/v2"

	"github.com/gpumesh/gpumesh/kube"
)

// PublisherConfig configures a Publisher.
type PublisherConfig struct {
	// Client reaches the apiserver. Required.
	Client kubernetes.Interface
	// Hosts are the GPU hosts to publish. Required.
	Hosts kube.Hosts
	// NodeSelector, if set, limits the slices to the nodes it selects
	// (those running the agent); nil publishes them for all nodes.
	NodeSelector *corev1.NodeSelector
	// Namespace holds the Lease that elects the one publishing agent.
	// Required.
	Namespace string
	// Identity names this agent in the Lease (its node name). Required.
	Identity string
	// LeaseDuration, RenewDeadline and RetryPeriod tune the election;
	// zero means 15s, 10s and 2s.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
}

// LeaseName is the Lease that elects the publishing agent.
const LeaseName = "gpu.gpumesh.dev-publisher"

// Publisher keeps the driver's ResourceSlices equal to the healthy hosts
// while it holds the Lease.
type Publisher struct {
	cfg PublisherConfig
	log *slog.Logger

	mu      sync.Mutex
	leading bool // guarded by mu
	// published is closed and replaced whenever the desired resources
	// were handed to the slice controller; guarded by mu
	published chan struct{}
}

// NewPublisher validates cfg.
func NewPublisher(cfg PublisherConfig) (*Publisher, error) {
	if cfg.Client == nil || cfg.Hosts == nil || cfg.Namespace == "" || cfg.Identity == "" {
		return nil, errors.New("dra: a publisher needs a client, hosts, a namespace and an identity")
	}
	if cfg.LeaseDuration <= 0 {
		cfg.LeaseDuration = 15 * time.Second
	}
	if cfg.RenewDeadline <= 0 {
		cfg.RenewDeadline = 10 * time.Second
	}
	if cfg.RetryPeriod <= 0 {
		cfg.RetryPeriod = 2 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Publisher{cfg: cfg, log: log, published: make(chan struct{})}, nil
}

// Leading reports whether this agent publishes now.
func (p *Publisher) Leading() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.leading
}

// Run campaigns for the Lease and publishes while it holds it, until ctx
// ends; then it gives the Lease up, so that another agent takes over at
// once. Slices stay when an agent stops: the next leader takes them over.
func (p *Publisher) Run(ctx context.Context) error {
	ctx = klog.NewContext(ctx, logr.FromSlogHandler(p.log.Handler()))
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: p.cfg.Namespace, Name: LeaseName},
		Client:     p.cfg.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: p.cfg.Identity},
	}
	// The elector starts OnStartedLeading in a goroutine of its own that
	// it does not wait for: that one only hands the leader's context to
	// this goroutine, which publishes and is waited for.
	leads := make(chan context.Context)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case lctx := <-leads:
				if err := p.publish(lctx); err != nil {
					p.log.Error("dra: publishing stopped", "err", err)
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	defer wg.Wait()
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   p.cfg.LeaseDuration,
			RenewDeadline:   p.cfg.RenewDeadline,
			RetryPeriod:     p.cfg.RetryPeriod,
			ReleaseOnCancel: true,
			Name:            LeaseName,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(lctx context.Context) {
					select {
					case leads <- lctx:
					case <-lctx.Done():
					}
				},
				OnStoppedLeading: func() {},
			},
		})
		if err != nil {
			return fmt.Errorf("dra: leader election: %w", err)
		}
		// Run returns when leadership is lost or ctx ends; campaign
		// again in the first case.
		le.Run(ctx)
	}
	return nil
}

// publish runs the slice controller and feeds it the hosts until ctx ends.
func (p *Publisher) publish(ctx context.Context) error {
	p.log.Info("dra: publishing ResourceSlices", "identity", p.cfg.Identity)
	hosts, changed := p.cfg.Hosts.Snapshot()
	ctrl, err := resourceslice.StartController(ctx, resourceslice.Options{
		DriverName: DriverName,
		KubeClient: p.cfg.Client,
		Resources:  Resources(hosts, p.cfg.NodeSelector),
		ErrorHandler: func(ctx context.Context, err error, msg string) {
			p.log.Warn("dra: publishing ResourceSlices", "msg", msg, "err", err)
		},
	})
	if err != nil {
		return err
	}
	defer ctrl.Stop()
	p.setLeading(true)
	defer p.setLeading(false)
	for {
		select {
		case <-ctx.Done():
			p.log.Info("dra: stopped publishing", "identity", p.cfg.Identity)
			return nil
		case <-changed:
		}
		hosts, changed = p.cfg.Hosts.Snapshot()
		ctrl.Update(Resources(hosts, p.cfg.NodeSelector))
		p.setLeading(true)
	}
}

func (p *Publisher) setLeading(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.leading = on
	close(p.published)
	p.published = make(chan struct{})
}

// Changed returns a channel closed when this publisher next starts or
// stops leading or hands the controller new resources.
func (p *Publisher) Changed() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.published
}
