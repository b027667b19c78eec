package safedial

import (
	"github.com/safedial/safedial/internal/rtnladdr"
	"golang.org/x/sys/unix"
)

// followRcvBuf is the receive buffer of a Follower's socket; 0 keeps the
// system's. Tests shrink it to force overruns.
var followRcvBuf = 0

var errLost = rtnladdr.ErrOverrun

type rtnlWatch struct{ c *rtnladdr.Conn }

func watchAddrs() (addrWatch, error) {
	c, err := rtnladdr.Subscribe(followRcvBuf)
	if err != nil {
		return nil, err
	}
	return rtnlWatch{c}, nil
}

func hostAddrOf(a rtnladdr.Addr) hostAddr {
	return hostAddr{index: a.Index, addr: a.Addr,
		tentative:  a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0,
		deprecated: a.Flags&unix.IFA_F_DEPRECATED != 0}
}

func (w rtnlWatch) list() ([]hostAddr, error) {
	list, err := rtnladdr.List()
	out := make([]hostAddr, len(list))
	for i, a := range list {
		out[i] = hostAddrOf(a)
	}
	return out, err
}

func (w rtnlWatch) read(fn func(hostAddr, bool)) error {
	return w.c.Read(func(e rtnladdr.Event) {
		if e.Link {
			fn(hostAddr{index: e.Index, link: true, name: e.Name}, e.New)
			return
		}
		fn(hostAddrOf(e.Addr), e.New)
	})
}

func (w rtnlWatch) close() { w.c.Close() }
