//! The one place where a daemon error gets the CNI code the runtime sees: every error flatnetd
//! answers is an [`Error`], and [`Error::code`] (with [`ConfigError::code`] for the kinds of bad
//! configuration) chooses its code. The code table itself is `flatnet_proto::cni::Code`, shared
//! with the shim.

use crate::config::{ConfigError, ConfigKind};
use crate::firewall::FirewallError;
use crate::ipam::{IpamError, StoreError};
use crate::netlink::{NetlinkError, NetnsError};
use flatnet_proto::cni::Code;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Environment(String),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The outbound NAT table could not be written.
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    #[error("{0}")]
    AlreadyAttached(String),
    /// The host veth name is another container's (a hash collision): nothing was created.
    #[error("{0}")]
    NameTaken(String),
    #[error("{0}")]
    UnknownContainer(String),
    #[error("{0}")]
    CheckFailed(String),
    #[error("{0}")]
    IncompatibleVersion(String),
    #[error("{0}")]
    NotAvailable(String),
    /// The daemon itself cannot serve (STATUS code 51).
    #[error("{0}")]
    Unavailable(String),
    /// The request could not get its turn in time (code 11).
    #[error("{0}")]
    Busy(String),
    #[error("{error}; undoing the partial attachment also failed: {undo}")]
    RollbackFailed { error: Box<Error>, undo: String },
    /// The container's namespace has an interface of the name asked for already.
    #[error("{0}")]
    InterfaceExists(String),
    /// Links that had to go could not be removed.
    #[error("{0}")]
    LinksLeft(String),
    /// The caller is not root (the socket is root's, and flatnetd checks `SO_PEERCRED`).
    #[error("{0}")]
    NotRoot(String),
    /// The request names no CNI command flatnetd serves.
    #[error("{0}")]
    UnknownCommand(String),
    /// flatnetd failed in a way it did not foresee (the request's task panicked).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The CNI code the runtime sees for this error.
    pub fn code(&self) -> Code {
        match self {
            Error::Config(e) => e.code(),
            Error::Environment(_) | Error::Netns(_) => Code::InvalidEnvironment,
            Error::Ipam(IpamError::OutsideRange { .. }) => Code::InvalidEnvironment,
            Error::Ipam(IpamError::Exhausted { .. } | IpamError::Taken { .. }) => {
                Code::AddressUnavailable
            }
            Error::Ipam(IpamError::Store(e)) | Error::Store(e) => match e {
                StoreError::AddressHeld { .. } => Code::AddressUnavailable,
                StoreError::Db(_) => Code::Io,
                StoreError::Corrupt(_) => Code::Internal,
            },
            Error::Netlink(_) | Error::InterfaceExists(_) | Error::LinksLeft(_) => Code::Kernel,
            Error::Firewall(_) => Code::Firewall,
            Error::AlreadyAttached(_) | Error::NameTaken(_) => Code::AlreadyAttached,
            Error::UnknownContainer(_) => Code::UnknownContainer,
            Error::CheckFailed(_) => Code::CheckFailed,
            Error::IncompatibleVersion(_) => Code::IncompatibleVersion,
            Error::NotAvailable(_) => Code::PluginNotAvailable,
            Error::Unavailable(_) => Code::PluginNotAvailableLimited,
            Error::Busy(_) => Code::TryAgainLater,
            Error::RollbackFailed { error, .. } => error.code(),
            Error::NotRoot(_) => Code::Io,
            Error::UnknownCommand(_) => Code::InvalidEnvironment,
            Error::Internal(_) => Code::Internal,
        }
    }
}

impl ConfigError {
    /// The CNI code of this kind of bad configuration.
    pub fn code(&self) -> Code {
        match self.kind {
            ConfigKind::Decode => Code::Decode,
            ConfigKind::Version => Code::IncompatibleVersion,
            ConfigKind::Invalid => Code::InvalidConfig,
        }
    }
}
