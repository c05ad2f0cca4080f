!> How much memory a host process may take: what its node has available, shared by the
!> node's ranks. The driver checks a batch's estimate against it before the first step, so
!> that too many runs for the machine are an error naming the size, not a crash half-way.
module host_memory
  use mpi_f08
  use host_common, only: dp, i8, ftoa
  implicit none
  private

  public :: memory_available_per_rank, bytes_text

contains

  !> MemAvailable of /proc/meminfo (read on the node's lowest rank) divided by the ranks on
  !> the node (collective); 0 where it cannot be read (no limit is then applied).
  function memory_available_per_rank(comm) result(bytes)
    type(MPI_Comm), intent(in) :: comm
    integer(i8) :: bytes
    type(MPI_Comm) :: node
    integer :: node_rank, node_size, ierr
    call MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, node, ierr)
    call MPI_Comm_rank(node, node_rank, ierr)
    call MPI_Comm_size(node, node_size, ierr)
    bytes = 0
    if (node_rank == 0) bytes = mem_available()
    call MPI_Bcast(bytes, 1, MPI_INTEGER8, 0, node, ierr)
    call MPI_Comm_free(node, ierr)
    bytes = bytes / node_size
  end function memory_available_per_rank

  !> MemAvailable in bytes, 0 if /proc/meminfo cannot tell.
  function mem_available() result(bytes)
    integer(i8) :: bytes
    character(len=256) :: line
    integer :: u, ios
    integer(i8) :: kib
    bytes = 0
    open (newunit=u, file='/proc/meminfo', status='old', action='read', iostat=ios)
    if (ios /= 0) return
    do
      read (u, '(a)', iostat=ios) line
      if (ios /= 0) exit
      if (line(1:13) == 'MemAvailable:') then
        read (line(14:), *, iostat=ios) kib
        if (ios == 0) bytes = kib * 1024
        exit
      end if
    end do
    close (u)
  end function mem_available

  !> '1.5 GiB (1610612736 bytes)', '12 MiB (...)', '300 KiB (...)', '17 B'.
  function bytes_text(bytes) result(text)
    integer(i8), intent(in) :: bytes
    character(len=:), allocatable :: text
    character(len=24) :: exact
    real(dp) :: b
    write (exact, '(i0)') bytes
    b = real(bytes, dp)
    if (b >= 1024.0_dp**3) then
      text = ftoa(b / 1024.0_dp**3)//' GiB'
    else if (b >= 1024.0_dp**2) then
      text = ftoa(b / 1024.0_dp**2)//' MiB'
    else if (b >= 1024) then
      text = ftoa(b / 1024)//' KiB'
    else
      text = trim(exact)//' B'
      return
    end if
    text = text//' ('//trim(exact)//' bytes)'
  end function bytes_text
end module host_memory
