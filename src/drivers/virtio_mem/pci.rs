//! The real device: virtio-mem over `virtio-drivers`' transport and
//! virtqueue, buffers through [`KernelHal`].

use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::{DeviceStatus, InterruptStatus, Transport};

use super::{Config, MemDevice, Request, Response};
use crate::drivers::virtio_hal::KernelHal;
use crate::error::Result;
use crate::{err, pr_info};

bitflags::bitflags! {
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Features: u64 {
        const UNPLUGGED_INACCESSIBLE = 1 << 1;
        const VERSION_1 = 1 << 32;
    }
}

pub struct VirtioMemDevice<T: Transport> {
    transport: T,
    queue: VirtQueue<KernelHal, 8>,
}

fn read_u64<T: Transport>(t: &T, offset: usize) -> virtio_drivers::Result<u64> {
    let lo: u32 = t.read_config_space(offset)?;
    let hi: u32 = t.read_config_space(offset + 4)?;
    Ok(((hi as u64) << 32) | lo as u64)
}

impl<T: Transport> VirtioMemDevice<T> {
    /// Negotiates features and sets up the request queue (5.15.6.1).
    pub fn new(mut transport: T) -> Result<Self> {
        let features = transport.begin_init(Features::VERSION_1 | Features::UNPLUGGED_INACCESSIBLE);
        if !features.contains(Features::UNPLUGGED_INACCESSIBLE) {
            pr_info!("virtio_mem: device allows access to unplugged memory");
        }
        let queue = match VirtQueue::new(&mut transport, 0, false, false) {
            Ok(q) => q,
            Err(e) => {
                fail(&mut transport);
                return Err(err!(EIO, "virtio_mem: no request queue: {e:?}"));
            }
        };
        transport.finish_init();
        Ok(Self { transport, queue })
    }

    /// Acknowledges the interrupt; whether the configuration changed.
    pub fn interrupt(&mut self) -> bool {
        self.transport
            .ack_interrupt()
            .contains(InterruptStatus::DEVICE_CONFIGURATION_INTERRUPT)
    }
}

/// `FAILED` (2.1.1): the driver gave up; the device may be reset.
fn fail<T: Transport>(t: &mut T) {
    let status = t.get_status();
    t.set_status(status | DeviceStatus::FAILED);
}

impl<T: Transport> MemDevice for VirtioMemDevice<T> {
    fn fail(&mut self) {
        fail(&mut self.transport);
    }

    fn config(&mut self) -> Result<Config> {
        let t = &self.transport;
        let read = || -> virtio_drivers::Result<Config> {
            Ok(Config {
                block_size: read_u64(t, 0)?,
                node_id: t.read_config_space(8)?,
                addr: read_u64(t, 16)?,
                region_size: read_u64(t, 24)?,
                usable_region_size: read_u64(t, 32)?,
                plugged_size: read_u64(t, 40)?,
                requested_size: read_u64(t, 48)?,
            })
        };
        t.read_consistent(read)
            .map_err(|e| err!(EIO, "virtio_mem: config: {e:?}"))
    }

    fn request(&mut self, req: Request) -> Result<Response> {
        let (kind, addr, nb_blocks): (u16, u64, u16) = match req {
            Request::Plug { addr, nb_blocks } => (0, addr, nb_blocks),
            Request::Unplug { addr, nb_blocks } => (1, addr, nb_blocks),
            Request::UnplugAll => (2, 0, 0),
            Request::State { addr, nb_blocks } => (3, addr, nb_blocks),
        };
        let mut buf = [0u8; 24];
        buf[0..2].copy_from_slice(&kind.to_le_bytes());
        buf[8..16].copy_from_slice(&addr.to_le_bytes());
        buf[16..18].copy_from_slice(&nb_blocks.to_le_bytes());
        let mut resp = [0u8; 10];
        self.queue
            .add_notify_wait_pop(&[&buf], &mut [&mut resp], &mut self.transport)
            .map_err(|e| err!(EIO, "virtio_mem: request failed: {e:?}"))?;
        let kind = u16::from_le_bytes([resp[0], resp[1]]);
        let state = u16::from_le_bytes([resp[8], resp[9]]);
        Ok(Response::from_raw(req, kind, state))
    }
}
