!> Line-by-line reading of text model files of any line length, with line numbers for messages.
module colnn_textio
  use colnn_kinds, only: i8
  use colnn_status
  use colnn_strings, only: str, next_token
  implicit none
  private

  public :: text_reader_t

  type :: text_reader_t
    integer :: unit = -1
    character(len=:), allocatable :: path
    integer :: line_no = 0
    integer(i8) :: file_size = 0
    character(len=:), allocatable :: buf   !< grows to the longest line seen
    integer :: n = 0                        !< length of the current line in buf
  contains
    procedure :: open => reader_open
    procedure :: close => reader_close
    procedure :: next_line => reader_next_line
    procedure :: line => reader_line
    procedure :: where => reader_where
  end type text_reader_t

contains

  subroutine reader_open(self, path, stat, errmsg)
    class(text_reader_t), intent(inout) :: self
    character(len=*), intent(in) :: path
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    logical :: exists
    integer :: ios
    character(len=256) :: msg
    self%path = path
    self%line_no = 0
    errmsg = ''
    stat = COLNN_OK
    inquire (file=path, exist=exists)
    if (.not. exists) then
      stat = COLNN_ERR_IO
      errmsg = path//': no such file'
      return
    end if
    inquire (file=path//'/.', exist=exists)
    if (exists) then
      stat = COLNN_ERR_IO
      errmsg = path//': is a directory, not a model file'
      return
    end if
    open (newunit=self%unit, file=path, status='old', action='read', access='sequential', &
          form='formatted', iostat=ios, iomsg=msg)
    if (ios /= 0) then
      stat = COLNN_ERR_IO
      errmsg = path//': cannot open: '//trim(msg)
      self%unit = -1
      return
    end if
    inquire (unit=self%unit, size=self%file_size)
    if (.not. allocated(self%buf)) allocate (character(len=4096) :: self%buf)
  end subroutine reader_open

  subroutine reader_close(self)
    class(text_reader_t), intent(inout) :: self
    if (self%unit /= -1) close (self%unit)
    self%unit = -1
  end subroutine reader_close

  !> Reads the next line; with skip_blank, blank lines and '#' comments are passed over.
  !> `eof` is true (and stat 0) at end of file.
  subroutine reader_next_line(self, eof, stat, errmsg, skip_blank)
    class(text_reader_t), intent(inout) :: self
    logical, intent(out) :: eof
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    logical, intent(in) :: skip_blank
    character(len=8192) :: chunk
    character(len=:), allocatable :: tmp
    integer :: ios, sz, pos, first, last
    character(len=256) :: msg

    stat = COLNN_OK
    errmsg = ''
    eof = .false.
    do
      self%n = 0
      do
        read (self%unit, '(a)', advance='no', iostat=ios, iomsg=msg, size=sz) chunk
        if (ios /= 0 .and. .not. is_iostat_eor(ios) .and. .not. is_iostat_end(ios)) then
          stat = COLNN_ERR_IO
          errmsg = self%path//':'//str(self%line_no + 1)//': read error: '//trim(msg)
          return
        end if
        if (sz > 0) then
          if (self%n + sz > len(self%buf)) then
            allocate (character(len=max(2 * len(self%buf), self%n + sz)) :: tmp)
            tmp(1:self%n) = self%buf(1:self%n)
            call move_alloc(tmp, self%buf)
          end if
          self%buf(self%n + 1:self%n + sz) = chunk(1:sz)
          self%n = self%n + sz
        end if
        if (is_iostat_eor(ios)) exit
        if (is_iostat_end(ios)) then
          if (self%n == 0) then
            eof = .true.
            return
          end if
          exit
        end if
      end do
      self%line_no = self%line_no + 1
      if (.not. skip_blank) return
      pos = 1
      call next_token(self%buf(1:self%n), pos, first, last)
      if (last < first) cycle
      if (self%buf(first:first) == '#') cycle
      return
    end do
  end subroutine reader_next_line

  function reader_line(self) result(s)
    class(text_reader_t), intent(in) :: self
    character(len=:), allocatable :: s
    s = self%buf(1:self%n)
  end function reader_line

  !> 'path:line' for messages.
  function reader_where(self) result(s)
    class(text_reader_t), intent(in) :: self
    character(len=:), allocatable :: s
    s = self%path//':'//str(self%line_no)
  end function reader_where
end module colnn_textio
